//! The Redis-protocol front end (issue 14), byte for byte over a real TCP socket: one region in
//! process, its RESP listener on port 0, and a client that writes raw RESP and reads the exact
//! bytes back — in RESP2 and, after `HELLO 3`, in RESP3. Covers the connection commands, the
//! key commands, pipelining (replies in order, a read after a write in the same pipeline sees
//! it), authentication, and bad input (unknown commands, wrong arity, unsupported options,
//! malformed and oversized frames).

use std::net::SocketAddr;
use std::time::Duration;

use leader::resp::RespSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::common::{Cluster, SOLO};
use conflict::rng::SplitMix64 as Rng;

/// A region with a RESP listener.
pub(crate) struct Solo {
    cluster: Cluster,
    resp: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Solo {
    /// The harness's solo region (small limits) with a RESP listener on port 0 in front of it.
    pub(crate) async fn start(token: Option<&str>, max_connections: usize) -> Solo {
        let cluster = Cluster::solo()
            .register(std::sync::Arc::new(conflict::examples::Counter))
            .table("counters", "counter")
            .start()
            .await;
        let config = cluster.config();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let resp = listener.local_addr().unwrap();
        let settings = RespSettings {
            databases: vec!["default".into(), "carts".into(), "counters".into()],
            token: token.map(str::to_owned),
            max_connections,
            max_request_bytes: config.limits.max_request_body_bytes,
            max_key_bytes: config.limits.max_key_bytes,
            max_value_bytes: config.limits.max_value_bytes,
        };
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(leader::resp::serve(
            listener,
            cluster.handle(SOLO),
            settings,
            stopped,
        ));
        Solo {
            cluster,
            resp,
            stop,
        }
    }

    pub(crate) async fn client(&self) -> Client {
        Client(TcpStream::connect(self.resp).await.unwrap())
    }

    pub(crate) async fn stop(self) {
        self.stop.send(true).unwrap();
        self.cluster.shutdown().await;
    }
}

/// A raw RESP client.
pub(crate) struct Client(pub(crate) TcpStream);

impl Client {
    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.unwrap();
    }

    /// Sends a command as an array of bulk strings.
    pub(crate) async fn cmd(&mut self, args: &[&str]) {
        self.send(&encode(args)).await;
    }

    /// Reads until exactly `expected` has arrived (failing on anything else or a timeout).
    pub(crate) async fn expect(&mut self, expected: &str) {
        let mut got = vec![0u8; expected.len()];
        let read = tokio::time::timeout(Duration::from_secs(10), self.0.read_exact(&mut got)).await;
        let got = match read {
            Ok(Ok(_)) => String::from_utf8_lossy(&got).into_owned(),
            Ok(Err(e)) => panic!("reading {expected:?}: {e}"),
            Err(_) => panic!("no reply within 10 s; expected {expected:?}"),
        };
        assert_eq!(got, expected);
    }

    /// Reads one line (up to `\r\n`) and returns it.
    pub(crate) async fn line(&mut self) -> String {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            let mut b = [0u8];
            self.0.read_exact(&mut b).await.unwrap();
            line.push(b[0]);
        }
        String::from_utf8_lossy(&line).into_owned()
    }

    /// Reads one whole reply (any type, nested) and returns its bytes.
    pub(crate) async fn frame(&mut self) -> String {
        let mut text = self.line().await;
        let count: usize = text[1..text.len() - 2].parse().unwrap_or(0);
        match text.as_bytes()[0] {
            b'$' if !text.starts_with("$-1") => {
                let mut body = vec![0u8; count + 2];
                self.0.read_exact(&mut body).await.unwrap();
                text.push_str(&String::from_utf8_lossy(&body));
            }
            b'*' | b'~' => {
                for _ in 0..count {
                    text.push_str(&Box::pin(self.frame()).await);
                }
            }
            b'%' => {
                for _ in 0..2 * count {
                    text.push_str(&Box::pin(self.frame()).await);
                }
            }
            _ => {}
        }
        text
    }

    /// Whether the server closed the connection (reads EOF within a second).
    pub(crate) async fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.0.read(&mut b)).await,
            Ok(Ok(0))
        )
    }

    pub(crate) async fn roundtrip(&mut self, args: &[&str], expected: &str) {
        self.cmd(args).await;
        self.expect(expected).await;
    }
}

pub(crate) fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

#[tokio::test]
async fn connection_commands_answer_as_redis_does() {
    let s = Solo::start(None, 16).await;
    let mut c = s.client().await;
    c.roundtrip(&["PING"], "+PONG\r\n").await;
    c.roundtrip(&["ping", "hi"], "$2\r\nhi\r\n").await;
    c.roundtrip(&["ECHO", "x y"], "$3\r\nx y\r\n").await;
    c.roundtrip(&["CLIENT", "SETNAME", "app"], "+OK\r\n").await;
    c.roundtrip(&["CLIENT", "GETNAME"], "$3\r\napp\r\n").await;
    c.roundtrip(&["CLIENT", "ID"], ":1\r\n").await;
    c.roundtrip(&["CLIENT", "SETINFO", "lib-name", "x"], "+OK\r\n")
        .await;
    c.roundtrip(&["SELECT", "1"], "+OK\r\n").await;
    c.cmd(&["SELECT", "3"]).await;
    assert!(c.line().await.starts_with("-ERR DB index is out of range"));
    c.roundtrip(&["COMMAND", "COUNT"], ":30\r\n").await;
    c.roundtrip(&["COMMAND", "DOCS"], "*0\r\n").await;
    c.roundtrip(&["CONFIG", "GET", "save"], "*2\r\n$4\r\nsave\r\n$0\r\n\r\n")
        .await;
    c.roundtrip(
        &["CONFIG", "GET", "appendonly"],
        "*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n",
    )
    .await;
    c.cmd(&["INFO", "replication"]).await;
    let info = c.frame().await;
    assert!(
        info.contains("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"),
        "{info}"
    );
    c.roundtrip(&["QUIT"], "+OK\r\n").await;
    assert!(c.closed().await, "QUIT closes the connection");
    s.stop().await;
}

#[tokio::test]
async fn keys_are_written_read_and_deleted_in_both_protocol_versions() {
    let s = Solo::start(None, 16).await;
    let mut c = s.client().await;
    c.roundtrip(&["GET", "k"], "$-1\r\n").await;
    c.roundtrip(&["SET", "k", "v1"], "+OK\r\n").await;
    c.roundtrip(&["GET", "k"], "$2\r\nv1\r\n").await;
    c.roundtrip(&["MSET", "a", "1", "b", "2"], "+OK\r\n").await;
    c.roundtrip(
        &["MGET", "a", "nope", "b"],
        "*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n",
    )
    .await;
    c.roundtrip(&["EXISTS", "a", "a", "nope"], ":2\r\n").await;
    c.roundtrip(&["DEL", "a", "nope"], ":1\r\n").await;
    c.roundtrip(&["UNLINK", "b"], ":1\r\n").await;
    c.roundtrip(&["GET", "a"], "$-1\r\n").await;
    // RESP3: nulls and maps change shape, the rest stays.
    c.cmd(&["HELLO", "3"]).await;
    let hello = c.frame().await;
    assert!(
        hello.starts_with("%7\r\n"),
        "HELLO 3 answers a map: {hello}"
    );
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
    c.roundtrip(&["GET", "a"], "_\r\n").await;
    c.roundtrip(&["GET", "k"], "$2\r\nv1\r\n").await;
    c.roundtrip(&["CONFIG", "GET", "save"], "%1\r\n$4\r\nsave\r\n$0\r\n\r\n")
        .await;
    c.roundtrip(&["HELLO", "4"], "-NOPROTO unsupported protocol version\r\n")
        .await;
    // Tables are databases: the same key in another table is another key.
    c.roundtrip(&["SELECT", "1"], "+OK\r\n").await;
    c.roundtrip(&["GET", "k"], "_\r\n").await;
    s.stop().await;
}

#[tokio::test]
async fn a_pipeline_is_answered_in_order_and_reads_its_own_writes() {
    let s = Solo::start(None, 16).await;
    let mut c = s.client().await;
    let mut pipeline = Vec::new();
    let mut expected = String::new();
    for i in 0..50 {
        let (k, v) = (format!("p{i}"), format!("v{i}"));
        pipeline.extend(encode(&["SET", &k, &v]));
        expected.push_str("+OK\r\n");
    }
    for i in 0..50 {
        pipeline.extend(encode(&["GET", &format!("p{i}")]));
        let v = format!("v{i}");
        expected.push_str(&format!("${}\r\n{v}\r\n", v.len()));
    }
    pipeline.extend(encode(&["PING"]));
    expected.push_str("+PONG\r\n");
    // One write: every command arrives before the first reply is due.
    c.send(&pipeline).await;
    c.expect(&expected).await;
    // Split across writes, mid-frame: the half-written frame waits for its rest.
    let frame = encode(&["SET", "split", "value"]);
    c.send(&frame[..7]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(&frame[7..]).await;
    c.expect("+OK\r\n").await;
    // Inline commands, as typed into telnet.
    c.send(b"PING\r\nGET split\r\n").await;
    c.expect("+PONG\r\n$5\r\nvalue\r\n").await;
    s.stop().await;
}

#[tokio::test]
async fn errors_keep_the_connection_where_redis_keeps_it() {
    let s = Solo::start(None, 16).await;
    let mut c = s.client().await;
    c.cmd(&["FLUSHALL"]).await;
    assert_eq!(
        c.line().await,
        "-ERR unknown command 'FLUSHALL', with args beginning with: \r\n"
    );
    c.roundtrip(
        &["GET"],
        "-ERR wrong number of arguments for 'get' command\r\n",
    )
    .await;
    c.roundtrip(
        &["MSET", "a"],
        "-ERR wrong number of arguments for 'mset' command\r\n",
    )
    .await;
    c.cmd(&["SET", "k", "v", "EX", "10"]).await;
    let line = c.line().await;
    assert!(
        line.starts_with("-ERR SET option 'EX' is not supported"),
        "{line}"
    );
    c.roundtrip(&["GET", "k"], "$-1\r\n").await;
    let big = "x".repeat(1025);
    c.cmd(&["SET", "k", &big]).await;
    assert!(c.line().await.contains("max_value_bytes"));
    let long_key = "k".repeat(65);
    c.cmd(&["SET", &long_key, "v"]).await;
    assert!(c.line().await.contains("max_key_bytes"));
    // Siblings in a multi-value table: GET says how many and how to read them. Two writes
    // with an empty context supersede nothing: concurrent values of one key.
    let handle = s.cluster.handle(SOLO);
    for v in ["red", "blue"] {
        let empty = Some(conflict::VersionVector::default());
        let value = conflict::Value::Bytes(v.as_bytes().to_vec());
        handle
            .write("carts", b"cart", value, empty)
            .await
            .unwrap()
            .unwrap();
    }
    c.roundtrip(&["SELECT", "1"], "+OK\r\n").await;
    c.cmd(&["GET", "cart"]).await;
    let line = c.line().await;
    assert!(
        line.starts_with("-MULTIVALUE the key has 2 concurrent values (siblings) in table 'carts'"),
        "{line}"
    );
    c.roundtrip(&["MGET", "cart"], "*1\r\n$-1\r\n").await;
    c.roundtrip(&["SELECT", "0"], "+OK\r\n").await;
    // Still usable after every error above.
    c.roundtrip(&["SET", "k", "v"], "+OK\r\n").await;

    // A frame that is not RESP: answered with a protocol error, then closed.
    let mut bad = s.client().await;
    bad.send(b"*1\r\n:5\r\n").await;
    let line = bad.line().await;
    assert!(line.starts_with("-ERR Protocol error"), "{line}");
    assert!(bad.closed().await, "a protocol error closes the connection");
    // A frame larger than max_request_body_bytes: refused before it is buffered whole.
    let mut huge = s.client().await;
    huge.send(b"*2\r\n$3\r\nGET\r\n$100000\r\n").await;
    huge.send(&[b'a'; 5000]).await;
    let line = huge.line().await;
    assert!(line.contains("larger than 4096 bytes"), "{line}");
    assert!(huge.closed().await);
    s.stop().await;
}

#[tokio::test]
async fn a_password_is_required_when_one_is_configured() {
    let s = Solo::start(Some("s3cret"), 16).await;
    let mut c = s.client().await;
    c.roundtrip(&["GET", "k"], "-NOAUTH Authentication required.\r\n")
        .await;
    c.roundtrip(
        &["AUTH", "wrong"],
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    )
    .await;
    c.roundtrip(&["AUTH", "s3cret"], "+OK\r\n").await;
    c.roundtrip(&["SET", "k", "v"], "+OK\r\n").await;
    // HELLO ... AUTH authenticates and switches protocol at once.
    let mut d = s.client().await;
    d.cmd(&["HELLO", "3", "AUTH", "default", "s3cret"]).await;
    assert!(d.frame().await.starts_with("%7\r\n"));
    d.roundtrip(&["GET", "k"], "$1\r\nv\r\n").await;
    // RESET forgets the authentication.
    d.roundtrip(&["RESET"], "+RESET\r\n").await;
    d.roundtrip(&["GET", "k"], "-NOAUTH Authentication required.\r\n")
        .await;
    s.stop().await;
}

#[tokio::test]
async fn connections_past_the_bound_are_told_and_closed() {
    let s = Solo::start(None, 2).await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.roundtrip(&["PING"], "+PONG\r\n").await;
    b.roundtrip(&["PING"], "+PONG\r\n").await;
    let mut c = s.client().await;
    let line = c.line().await;
    assert!(
        line.starts_with("-ERR max number of clients reached (2)"),
        "{line}"
    );
    assert!(c.closed().await);
    // One leaves: a new one is served.
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut d = s.client().await;
    d.roundtrip(&["PING"], "+PONG\r\n").await;
    s.stop().await;
}

/// Panics in any thread of this test binary (the hook is process-wide; a panic elsewhere fails
/// its own test anyway).
static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[tokio::test]
async fn random_and_mutated_frames_never_panic_the_server() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        default_hook(info);
    }));
    let s = Solo::start(None, 64).await;
    let valid: Vec<Vec<u8>> = vec![
        encode(&["SET", "key", "value"]),
        encode(&["MGET", "a", "b", "c"]),
        encode(&["HELLO", "3", "AUTH", "default", "x"]),
        encode(&["CONFIG", "GET", "*"]),
        b"*2\r\n$3\r\nGET\r\n$-1\r\n".to_vec(),
        [encode(&["SELECT", "2"]), encode(&["INCRBY", "n", "-7"])].concat(),
        encode(&["WAIT", "1", "50"]),
        encode(&["MERIDIAN.SET", "k", "v", "AQID"]),
        encode(&["MERIDIAN.SESSION", "AAEC"]),
    ];
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
    let mut next = move || rng.next_u64();
    for case in 0..300 {
        let mut bytes = valid[case % valid.len()].clone();
        match next() % 4 {
            // Flip a few bytes.
            0 => {
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] = next() as u8;
                }
            }
            // Cut it short.
            1 => bytes.truncate((next() as usize) % bytes.len()),
            // Random bytes.
            2 => bytes = (0..1 + next() % 200).map(|_| next() as u8).collect(),
            // Two frames glued with garbage between.
            _ => {
                bytes.extend((0..next() % 8).map(|_| next() as u8));
                bytes.extend(valid[(case + 1) % valid.len()].clone());
            }
        }
        let mut c = s.client().await;
        c.send(&bytes).await;
        // Whatever it answered, the connection ends (closed by us here, or by the server
        // after a protocol error), and the server keeps serving.
        drop(c);
        if case % 50 == 49 {
            let mut probe = s.client().await;
            probe.roundtrip(&["PING"], "+PONG\r\n").await;
        }
    }
    let mut probe = s.client().await;
    probe.roundtrip(&["SET", "after", "ok"], "+OK\r\n").await;
    probe.roundtrip(&["GET", "after"], "$2\r\nok\r\n").await;
    assert_eq!(
        PANICS.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a panic"
    );
    s.stop().await;
}

/// A client that pipelines requests and never reads the replies: the server stops reading
/// from it once its replies back up (the client's writes then stall), instead of buffering
/// replies without bound, and it keeps serving everyone else.
#[tokio::test]
async fn a_client_that_never_reads_is_not_buffered_without_bound() {
    let s = Solo::start(None, 16).await;
    let mut c = s.client().await;
    c.roundtrip(&["SET", "big", &"v".repeat(1000)], "+OK\r\n")
        .await;
    let get = encode(&["GET", "big"]);
    let batch: Vec<u8> = get.iter().copied().cycle().take(get.len() * 1000).collect();
    let mut sent = 0usize;
    let stalled = loop {
        match tokio::time::timeout(Duration::from_secs(2), c.send(&batch)).await {
            Ok(()) => sent += 1000,
            Err(_) => break true,
        }
        assert!(
            sent < 1_000_000,
            "a million unread replies (1 GB) were accepted"
        );
    };
    assert!(stalled);
    let mut other = s.client().await;
    other.roundtrip(&["PING"], "+PONG\r\n").await;
    s.stop().await;
}

/// A Redis client no one here wrote (the `redis` crate, RESP2 and RESP3) against a two-region
/// cluster whose RESP listeners come from the configuration path (`Wiring::resp_bind`, as
/// `resp_addr` in regions.toml): a write through RESP at us-east is read through HTTP and
/// through RESP at eu-west.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_client_writes_in_one_region_and_reads_in_another() {
    let cluster = crate::common::Cluster::builder(&["us-east", "eu-west"])
        .start()
        .await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            let (us, eu) = (c.resp_addr("us-east"), c.resp_addr("eu-west"));
            tokio::task::spawn_blocking(move || {
                let client = redis::Client::open(format!("redis://{us}/")).unwrap();
                let mut con = client.get_connection().unwrap();
                let _: () = redis::cmd("SET")
                    .arg("greeting")
                    .arg("hello")
                    .query(&mut con)
                    .unwrap();
                let _: () = redis::cmd("MSET")
                    .arg("a")
                    .arg("1")
                    .arg("b")
                    .arg("2")
                    .query(&mut con)
                    .unwrap();
                let got: Option<String> =
                    redis::cmd("GET").arg("greeting").query(&mut con).unwrap();
                assert_eq!(got.as_deref(), Some("hello"));
                // WAIT through the client's own command: eu-west has the writes durably.
                let regions: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut con).unwrap();
                assert_eq!(regions, 1);
                // INCR on a table without counters is the client's own WRONGTYPE error.
                let err = redis::cmd("INCR")
                    .arg("greeting")
                    .query::<i64>(&mut con)
                    .unwrap_err();
                assert_eq!(err.code(), Some("WRONGTYPE"), "{err}");
            })
            .await
            .unwrap();
            let http = reqwest::Client::new();
            let url = format!("{}/v1/kv/default/greeting", c.api_url("eu-west"));
            crate::common::wait_until("eu-west to have the write made through RESP", async || {
                let resp = http.get(&url).send().await.map_err(|e| e.to_string())?;
                match resp.status() {
                    reqwest::StatusCode::OK => Ok(resp.text().await.unwrap()),
                    s => Err(format!("GET {url}: {s}")),
                }
            })
            .await;
            let body = http.get(&url).send().await.unwrap().text().await.unwrap();
            assert_eq!(body, "hello");
            tokio::task::spawn_blocking(move || {
                let client = redis::Client::open(format!("redis://{eu}/?protocol=resp3")).unwrap();
                let mut con = client.get_connection().unwrap();
                let got: Option<String> =
                    redis::cmd("GET").arg("greeting").query(&mut con).unwrap();
                assert_eq!(got.as_deref(), Some("hello"));
                let none: Option<String> =
                    redis::cmd("GET").arg("missing").query(&mut con).unwrap();
                assert_eq!(none, None);
                let err = redis::cmd("SET")
                    .arg("k")
                    .arg("v")
                    .arg("PX")
                    .arg("10")
                    .query::<()>(&mut con)
                    .unwrap_err();
                assert!(err.to_string().contains("not supported"), "{err}");
            })
            .await
            .unwrap();
        })
        .await;
}

/// `redis-cli` itself (Debian's redis-tools; `scripts/test` installs it when missing) against
/// a region, in RESP2 and with `-3` in RESP3: it starts cleanly (its `COMMAND DOCS` and
/// `HELLO` at connect), writes, reads, and shows Meridian's errors as Redis's.
#[tokio::test]
async fn redis_cli_works_unmodified() {
    let Ok(version) = std::process::Command::new("redis-cli")
        .arg("--version")
        .output()
    else {
        panic!("redis-cli is not installed: install Debian's redis-tools (scripts/test does)");
    };
    assert!(version.status.success());
    let s = Solo::start(None, 16).await;
    let port = s.resp.port().to_string();
    let cli = |args: &[&str]| {
        let port = port.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        async move {
            let out = tokio::process::Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port])
                .args(&args)
                .output()
                .await
                .expect("running redis-cli");
            assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
        }
    };
    assert_eq!(cli(&["PING"]).await, "PONG");
    assert_eq!(cli(&["SET", "city", "Lisbon"]).await, "OK");
    assert_eq!(cli(&["GET", "city"]).await, "Lisbon");
    // Without a terminal redis-cli prints raw values (a nil as an empty line).
    assert_eq!(cli(&["-3", "GET", "city"]).await, "Lisbon");
    assert_eq!(cli(&["-3", "GET", "nowhere"]).await, "");
    let hello = cli(&["-3", "HELLO", "3"]).await;
    assert!(hello.lines().any(|l| l == "proto 3"), "{hello}");
    assert_eq!(cli(&["MSET", "x", "1", "y", "2"]).await, "OK");
    assert_eq!(cli(&["MGET", "x", "y"]).await, "1\n2");
    assert_eq!(
        cli(&["-n", "1", "GET", "city"]).await,
        "",
        "database 1 is another table"
    );
    let err = cli(&["SET", "city", "Porto", "NX"]).await;
    assert!(err.contains("SET option 'NX' is not supported"), "{err}");
    assert_eq!(cli(&["DEL", "city", "x"]).await, "2");
    // Counters (database 2 is the `counters` table) and WAIT with no other region.
    assert_eq!(cli(&["-n", "2", "INCRBY", "stock", "5"]).await, "5");
    assert_eq!(cli(&["-n", "2", "DECR", "stock"]).await, "4");
    assert_eq!(cli(&["-n", "2", "GET", "stock"]).await, "4");
    assert_eq!(cli(&["WAIT", "0", "100"]).await, "0");
    s.stop().await;
}

/// Sends `SCAN cursor [args...]` and returns the next cursor and the keys.
async fn scan(c: &mut Client, cursor: &str, args: &[&str]) -> (String, Vec<String>) {
    let mut cmd = vec!["SCAN", cursor];
    cmd.extend_from_slice(args);
    c.cmd(&cmd).await;
    let frame = c.frame().await;
    // *2 $n cursor *k ($len key)...
    let lines: Vec<&str> = frame.split("\r\n").collect();
    let next = lines[2].to_owned();
    let keys = lines[4..]
        .chunks(2)
        .filter(|kv| kv.len() == 2 && !kv[1].is_empty())
        .map(|kv| kv[1].to_owned())
        .collect();
    (next, keys)
}

#[tokio::test]
async fn scan_lists_every_key_once_while_keys_change_and_dbsize_counts_them() {
    let s = Solo::start(None, 16).await;
    let mut c = s.client().await;
    let mut expected = std::collections::BTreeSet::new();
    for i in 0..25 {
        let key = format!("user:{i:02}");
        c.roundtrip(&["SET", &key, "v"], "+OK\r\n").await;
        expected.insert(key);
    }
    c.roundtrip(&["SET", "order:1", "v"], "+OK\r\n").await;
    c.roundtrip(&["DBSIZE"], ":26\r\n").await;
    // Page through user:* ten at a time; between pages, add and delete keys elsewhere in the
    // key space. Every key present throughout is listed exactly once.
    let mut seen = Vec::new();
    let mut cursor = "0".to_owned();
    let mut pages = 0;
    loop {
        let (next, keys) = scan(&mut c, &cursor, &["MATCH", "user:*", "COUNT", "10"]).await;
        seen.extend(keys);
        pages += 1;
        c.roundtrip(&["SET", &format!("new:{pages}"), "v"], "+OK\r\n")
            .await;
        c.roundtrip(
            &["DEL", "order:1"],
            if pages == 1 { ":1\r\n" } else { ":0\r\n" },
        )
        .await;
        if next == "0" {
            break;
        }
        assert_ne!(next, cursor);
        cursor = next;
    }
    assert_eq!(pages, 3, "25 keys at 10 a page");
    let listed: std::collections::BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(listed, expected);
    assert_eq!(seen.len(), expected.len(), "no key twice");
    // DBSIZE counts present keys only (order:1 was deleted, three new:* were added).
    c.roundtrip(&["DBSIZE"], ":28\r\n").await;
    // A cursor is a position, usable once, and only in its database.
    let (next, _) = scan(&mut c, "0", &["COUNT", "5"]).await;
    c.roundtrip(&["SELECT", "1"], "+OK\r\n").await;
    c.cmd(&["SCAN", &next]).await;
    assert!(c.line().await.starts_with("-ERR invalid cursor"));
    c.cmd(&["SCAN", "nonsense"]).await;
    assert_eq!(c.line().await, "-ERR invalid cursor\r\n");
    c.roundtrip(&["DBSIZE"], ":0\r\n").await;
    s.stop().await;
}
