//! Hostile HTTP requests against one region's API (issue 6 §5): random methods, paths with odd
//! percent-encoding, garbage and oversized headers, bodies at and over the limits, invalid
//! query parameters — generated from fixed seeds, a bounded number of them.
//!
//! For every response: no 5xx but `503` (a region that is unavailable or behind a session),
//! no redirect, and every error is JSON `{"error": <text>, "code": <text>}`. Afterwards the
//! server still answers `/healthz`, `/v1/status`, and a normal PUT/GET round trip works, so no
//! request panicked a handler or the driver behind it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use conflict::{Dot, ReplicaId, Seq, VersionVector};
use leader::api::encode_context;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value as Json;

use crate::common::{Cluster, SOLO};
use conflict::rng::SplitMix64 as Rng;

/// Requests per seed.
const REQUESTS: usize = 250;
/// The seeds: each one is a reproducible sequence of requests.
const SEEDS: [u64; 2] = [0x6d65_7269_6469_616e, 0x686f_7374_696c_6521];

/// The limits of [`Cluster::solo`].
const MAX_VALUE_BYTES: usize = 1024;
const MAX_REQUEST_BODY_BYTES: usize = 4096;

/// One generated request.
struct Req {
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Vec<u8>>,
}

impl std::fmt::Debug for Req {
    /// Short enough for a failure message: long fields are cut.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cut = |s: &str| -> String {
            if s.len() > 160 {
                format!("{}…({} bytes)", &s[..s.floor_char_boundary(160)], s.len())
            } else {
                s.to_owned()
            }
        };
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", cut(&String::from_utf8_lossy(v.as_bytes()))))
            .collect();
        write!(
            f,
            "{} {} headers={headers:?} body={:?}",
            self.method,
            cut(&self.path),
            self.body.as_ref().map(Vec::len)
        )
    }
}

/// A token for a vector this region has never reached: valid, and ahead of it.
fn token_from_the_future(rng: &mut Rng) -> String {
    let replica = ReplicaId::from_u128(u128::from(rng.next_u64()) | 1);
    let vv: VersionVector = [Dot::new(replica, Seq(1 + rng.next_u64() % 1000))]
        .into_iter()
        .collect();
    encode_context(&vv)
}

fn percent_bytes(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        write!(s, "%{b:02X}").expect("writing to a String cannot fail");
        s
    })
}

/// One path segment: names that exist, odd or invalid percent-encoding, limits, unicode.
fn segment(rng: &mut Rng) -> String {
    const FIXED: &[&str] = &[
        "default",
        "carts",
        "nope",
        "k",
        "key",
        "%",
        "%z",
        "%zz",
        "%%",
        "%2",
        "%00",
        "%2F",
        "%2f..%2f",
        "..",
        ".",
        "%2e%2e",
        "%C0%AF",
        "%ED%A0%80",
        "%EF%BF%BF",
        "%FF%FE",
        "a%20b",
        "ключ",
        "🔑",
        "a+b",
        "~",
        "%7E",
        ";x=1",
        "@:!$&'()*,=",
    ];
    const SAFE: &[u8] = b"abcXYZ0189-._~!$&'()*+,;=:@";
    match rng.index(7) {
        0 | 1 => (*rng.pick(FIXED)).to_owned(),
        2 => {
            let n = rng.index(12);
            percent_bytes(&rng.bytes(n))
        }
        3 => {
            // Around the key limit, or far beyond it.
            let n = *rng.pick(&[63, 64, 65, 200, 5000]);
            "x".repeat(n)
        }
        4 => String::new(),
        _ => {
            let n = 1 + rng.index(10);
            (0..n).map(|_| *rng.pick(SAFE) as char).collect()
        }
    }
}

fn path(rng: &mut Rng) -> String {
    match rng.index(16) {
        0..=4 => format!("/v1/kv/{}/{}", segment(rng), segment(rng)),
        5 => format!("/v1/kv/{}", segment(rng)),
        6 => format!("/v1/kv/{}/{}/{}", segment(rng), segment(rng), segment(rng)),
        7 => "/v1/conflicts".to_owned(),
        8 => (*rng.pick(&["/v1/status", "/metrics", "/healthz", "/v1/kv/", "/v1/kv//"])).to_owned(),
        9 => "/v1/admin/links".to_owned(),
        10 => format!("/v1/admin/links/{}", segment(rng)),
        11 => format!("/{}", segment(rng)),
        12 => "//v1//kv//default//k".to_owned(),
        13 => format!("/v1/kv/default/{}", segment(rng)),
        _ => "/v1/kv/default/k".to_owned(),
    }
}

fn query(rng: &mut Rng) -> String {
    let mut params = Vec::new();
    for _ in 0..rng.index(4) {
        let p = match rng.index(11) {
            0 => format!(
                "durability={}",
                rng.pick(&["local", "one", "quorum", "all", "bogus", "", "LOCAL", "%FF"])
            ),
            1 => format!(
                "timeout_ms={}",
                rng.pick(&[
                    "-1",
                    "0",
                    "100",
                    "60001",
                    "99999999999999999999999",
                    "abc",
                    "1.5",
                    ""
                ])
            ),
            2 => format!(
                "session={}",
                rng.pick(&["garbage", "", "AAAA", "%00", "_-_-"])
            ),
            3 => format!("session={}", token_from_the_future(rng)),
            4 => format!(
                "siblings={}",
                rng.pick(&["true", "false", "maybe", "1", ""])
            ),
            5 => format!(
                "limit={}",
                rng.pick(&["-1", "0", "5", "18446744073709551616", "abc"])
            ),
            6 => format!("before={}", rng.pick(&["-1", "0", "7", "x"])),
            7 => format!("table={}", segment(rng)),
            8 => (*rng.pick(&["&&==", "%zz=%zz", "=", "a", "a=b=c"])).to_owned(),
            9 => {
                let n = rng.index(8);
                format!("{}={}", percent_bytes(&rng.bytes(n)), segment(rng))
            }
            _ => format!("session={}", percent_bytes(&rng.bytes(20))),
        };
        params.push(p);
    }
    if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    }
}

/// A header value: garbage, base64 of garbage, a valid token from the future, huge, or
/// bytes outside ASCII.
fn token_value(rng: &mut Rng) -> HeaderValue {
    let text = match rng.index(7) {
        0 => "garbage!".to_owned(),
        1 => {
            use base64::Engine as _;
            let n = rng.index(40);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rng.bytes(n))
        }
        2 => token_from_the_future(rng),
        3 => "A".repeat(*rng.pick(&[1024, 16 * 1024])),
        4 => String::new(),
        5 => {
            // obs-text: bytes 0x80..=0xFF are allowed in a header value but are not ASCII.
            let n = 1 + rng.index(16);
            let bytes: Vec<u8> = (0..n).map(|_| 0x80 | rng.next_u64() as u8).collect();
            return HeaderValue::from_bytes(&bytes).expect("obs-text is a valid header value");
        }
        _ => "  \t AAAA  ".to_owned(),
    };
    HeaderValue::from_str(&text).expect("printable ASCII is a valid header value")
}

fn headers(rng: &mut Rng) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for _ in 0..rng.index(5) {
        let (name, value) = match rng.index(7) {
            0 => ("x-meridian-context", token_value(rng)),
            1 => ("x-meridian-session", token_value(rng)),
            2 => (
                "x-meridian-durability",
                HeaderValue::from_static(rng.pick::<&str>(&["bogus", "all", "one", ""])),
            ),
            3 => (
                "x-meridian-timeout-ms",
                HeaderValue::from_static(rng.pick::<&str>(&["-1", "0", "60001", "1e3", " 7 ", ""])),
            ),
            4 => ("content-type", token_value(rng)),
            5 => ("authorization", token_value(rng)),
            _ => ("x-garbage", token_value(rng)),
        };
        out.push((HeaderName::from_static(name), value));
    }
    out
}

fn body(rng: &mut Rng) -> Option<Vec<u8>> {
    let size = *rng.pick(&[
        0,
        1,
        100,
        MAX_VALUE_BYTES - 1,
        MAX_VALUE_BYTES,
        MAX_VALUE_BYTES + 1,
        MAX_REQUEST_BODY_BYTES,
        MAX_REQUEST_BODY_BYTES + 1,
        64 * 1024,
    ]);
    match rng.index(4) {
        0 => None,
        1 => Some(br#"{"blocked": true, "loss": 1e309}"#.to_vec()),
        _ => Some(rng.bytes(size)),
    }
}

fn request(rng: &mut Rng) -> Req {
    let method = match rng.index(10) {
        0..=2 => Method::PUT,
        3..=5 => Method::GET,
        6 => Method::DELETE,
        7 => rng
            .pick(&[Method::POST, Method::PATCH, Method::HEAD, Method::OPTIONS])
            .clone(),
        8 => Method::from_bytes(rng.pick::<&[u8]>(&[b"FOO", b"PROPFIND", b"X-Y_Z"]))
            .expect("a token is a valid method"),
        _ => Method::PUT,
    };
    let path = format!("{}{}", path(rng), query(rng));
    Req {
        method,
        path,
        headers: headers(rng),
        body: body(rng),
    }
}

/// A running single-region leader and an HTTP client for its API.
struct Solo {
    cluster: Cluster,
    base: String,
    http: reqwest::Client,
}

impl Solo {
    /// The harness's solo region (small limits, so the limit errors are cheap to reach; its
    /// admin routes live) with a short session wait, so a request with a session token from
    /// the future is answered quickly.
    async fn start() -> Solo {
        let cluster = Cluster::solo()
            .timeout("session_wait_ms", 50)
            .timeout("write_timeout_ms", 200)
            .start()
            .await;
        let base = cluster.api_url(SOLO);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Solo {
            cluster,
            base,
            http,
        }
    }

    /// Sends `req`; `None` when reqwest itself refuses to build it (not the server's doing).
    async fn send(&self, req: &Req) -> Option<reqwest::Response> {
        let url = format!("{}{}", self.base, req.path);
        let mut builder = self.http.request(req.method.clone(), &url);
        for (name, value) in &req.headers {
            builder = builder.header(name.clone(), value.clone());
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        let built = builder.build().ok()?;
        Some(
            self.http
                .execute(built)
                .await
                .unwrap_or_else(|e| panic!("{req:?}: the server dropped the request: {e}")),
        )
    }
}

/// Checks one response against the rules in the module docs: its status, or what is wrong.
async fn check(req: &Req, resp: reqwest::Response) -> Result<StatusCode, String> {
    let status = resp.status();
    if status.is_informational() || status.is_redirection() {
        return Err(format!("{req:?}: unexpected status {status}"));
    }
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        return Err(format!(
            "{req:?}: server error {status}: {:?}",
            resp.text().await
        ));
    }
    if status.is_success() || req.method == Method::HEAD {
        return Ok(status);
    }
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let text = resp.text().await.unwrap_or_default();
    let body: Json = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{req:?}: a {status} error is not JSON ({e}; content-type {content_type:?}): {text:?}"
        )
    })?;
    let (Some(error), Some(code)) = (body["error"].as_str(), body["code"].as_str()) else {
        return Err(format!(
            "{req:?}: a {status} error lacks `error` or `code`: {text}"
        ));
    };
    if error.is_empty() || code.is_empty() {
        return Err(format!("{req:?}: empty error: {text}"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE
        && !["unavailable", "behind_session"].contains(&code)
    {
        return Err(format!("{req:?}: 503 with code {code}: {text}"));
    }
    Ok(status)
}

#[tokio::test]
async fn random_and_mutated_requests_get_json_errors_and_never_break_the_server() {
    let s = Solo::start().await;
    let mut seen: BTreeMap<u16, usize> = BTreeMap::new();
    let mut refused_by_client = 0;
    let mut failures = Vec::new();
    for seed in SEEDS {
        let mut rng = Rng::new(seed);
        for i in 0..REQUESTS {
            let req = request(&mut rng);
            let Some(resp) = s.send(&req).await else {
                refused_by_client += 1;
                continue;
            };
            match check(&req, resp).await {
                Ok(status) => *seen.entry(status.as_u16()).or_default() += 1,
                Err(failure) => failures.push(format!("seed {seed:#x} request {i}: {failure}")),
            }
        }
    }
    eprintln!("statuses: {seen:?}; {refused_by_client} requests reqwest would not build");
    assert!(
        failures.is_empty(),
        "{} responses broke the rules:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The generator reaches the interesting answers, or this test proves little.
    for status in [200, 400, 404, 405, 409, 413, 503] {
        assert!(
            seen.contains_key(&status),
            "no request got a {status}: {seen:?}"
        );
    }

    // Still alive and well.
    let health = s
        .http
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.unwrap(), "ok\n");
    let status = s
        .http
        .get(format!("{}/v1/status", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::OK);
    let url = format!("{}/v1/kv/default/after-the-storm", s.base);
    let put = s.http.put(&url).body("calm").send().await.unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let get = s.http.get(&url).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.text().await.unwrap(), "calm");
    s.cluster.shutdown().await;
}
