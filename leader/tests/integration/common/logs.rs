//! The test binary's one tracing subscriber, installed by the first test that starts a region.
//!
//! It does two things: logs go to the test's captured output (`RUST_LOG=leader=debug,
//! transport=info` shows more than errors), and the warnings of a test that asks for them are
//! kept for it to read. Tests share the process, so a test cannot own the global subscriber;
//! instead it runs its regions on a runtime of its own ([`runtime`]) whose threads carry its
//! name, and [`captured`] returns what was logged on those threads only, so another test's
//! warnings never mix in. (turmoil's tests need no capture here: every host runs on the
//! test's own thread, under a subscriber set just for it.)

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

/// Captured warnings: thread-name prefix → the text logged on those threads.
static CAPTURED: Mutex<BTreeMap<String, Vec<u8>>> = Mutex::new(BTreeMap::new());

fn captures() -> MutexGuard<'static, BTreeMap<String, Vec<u8>>> {
    // A test that panicked while holding the lock left whole lines behind: still readable.
    CAPTURED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Installs the subscriber once; later calls do nothing.
pub(crate) fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
    let output = fmt::layer().with_test_writer().with_filter(filter);
    let capture = fmt::layer()
        .with_ansi(false)
        .with_writer(ByThread)
        .with_filter(LevelFilter::WARN);
    let _ = tracing_subscriber::registry()
        .with(output)
        .with(capture)
        .try_init();
}

/// A multi-threaded runtime (two workers, as `#[tokio::test(flavor = "multi_thread",
/// worker_threads = 2)]` builds) whose threads are named `name`, with capture of their
/// warnings started.
pub(crate) fn runtime(name: &str) -> tokio::runtime::Runtime {
    init_tracing();
    captures().insert(name.to_owned(), Vec::new());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// Everything logged at WARN and above on the threads of [`runtime`]`(name)` so far.
pub(crate) fn captured(name: &str) -> String {
    String::from_utf8_lossy(captures().get(name).map_or(&[][..], Vec::as_slice)).into_owned()
}

/// Writes each event to the capture of the thread that logs it, if that thread's test asked.
struct ByThread;

impl<'a> MakeWriter<'a> for ByThread {
    type Writer = ThreadCapture;

    fn make_writer(&'a self) -> ThreadCapture {
        ThreadCapture(std::thread::current().name().map(str::to_owned))
    }
}

struct ThreadCapture(Option<String>);

impl Write for ThreadCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(thread) = &self.0 {
            for (name, text) in captures().iter_mut() {
                if thread == name {
                    text.extend_from_slice(buf);
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
