//! The HTTP API of one region, in process, over real sockets: every route, the causal-context
//! header, and every error a client can meet — each asserted by status code, by the stable
//! `code` of the JSON error and by the words of its message that tell the client what to do.
//!
//! Each test starts its own single-region leader (certificates in a temporary directory, the
//! QUIC socket and the API bound on port 0), so tests run in parallel and every count is exact.

use conflict::{ReplicaId, Seq, VersionVector};
use leader::api::{CONTEXT_HEADER, SIBLINGS_HEADER, decode_context, encode_context};
use reqwest::StatusCode;
use serde_json::Value as Json;

use crate::common::{Cluster, SOLO};

/// A running single-region leader and an HTTP client for its API.
struct Solo {
    cluster: Cluster,
    base: String,
    http: reqwest::Client,
}

impl Solo {
    /// The harness's solo region. `max_siblings = 2` makes the third concurrent version of a
    /// key the one that is refused.
    async fn start(token: Option<&str>) -> Solo {
        let mut builder = Cluster::solo()
            .limit("max_siblings", 2)
            .limit("conflict_log_entries", 100);
        if let Some(token) = token {
            builder = builder.api_token(token);
        }
        let cluster = builder.start().await;
        let base = cluster.api_url(SOLO);
        Solo {
            cluster,
            base,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn key(&self, table: &str, key: &str) -> String {
        self.url(&format!("/v1/kv/{table}/{key}"))
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// Writes `value` with an optional context header; returns the response.
    async fn put(
        &self,
        table: &str,
        key: &str,
        value: &str,
        context: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.http.put(self.key(table, key)).body(value.to_owned());
        if let Some(ctx) = context {
            req = req.header(CONTEXT_HEADER, ctx);
        }
        req.send().await.unwrap()
    }

    /// Writes and expects success; returns the receipt.
    async fn put_ok(&self, table: &str, key: &str, value: &str, context: Option<&str>) -> Json {
        let resp = self.put(table, key, value, context).await;
        assert_eq!(resp.status(), StatusCode::OK, "PUT {table}/{key}");
        resp.json().await.unwrap()
    }

    /// Reads a key; returns the status and the context header.
    async fn read(&self, table: &str, key: &str) -> (StatusCode, String, reqwest::Response) {
        let resp = self.http.get(self.key(table, key)).send().await.unwrap();
        let context = header(&resp, CONTEXT_HEADER);
        (resp.status(), context, resp)
    }

    async fn stop(self) {
        self.cluster.shutdown().await;
    }
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("the response has no {name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Splits an error response into its status, `code` and message, checking the JSON shape
/// every error shares: `{"error": "...", "code": "..."}`.
async fn error_of(resp: reqwest::Response) -> (StatusCode, String, String) {
    let status = resp.status();
    assert!(
        header(&resp, "content-type").starts_with("application/json"),
        "errors are JSON"
    );
    let body: Json = resp.json().await.unwrap();
    let code = body["code"]
        .as_str()
        .expect("an error has a code")
        .to_owned();
    let message = body["error"]
        .as_str()
        .expect("an error has a message")
        .to_owned();
    (status, code, message)
}

#[tokio::test]
async fn put_then_get_returns_the_bytes_and_the_context() {
    let s = Solo::start(None).await;
    let receipt = s.put_ok("default", "greeting", "hello", None).await;
    assert_eq!(receipt["region"], "solo");
    assert_eq!(receipt["dot"]["seq"], 1);
    assert_eq!(receipt["conflict"], false);
    assert!(receipt["hlc"].as_str().unwrap().ends_with("Z+0"));

    let (status, context, resp) = s.read("default", "greeting").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), "application/octet-stream");
    assert_eq!(header(&resp, SIBLINGS_HEADER), "1");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"hello");
    // The context read is the one the write returned, and it covers exactly that write.
    assert_eq!(context, receipt["context"].as_str().unwrap());
    let vv: Vec<(ReplicaId, Seq)> = decode_context(&context).unwrap().iter().collect();
    assert_eq!(vv.len(), 1);
    // The API names replicas by their full UUID.
    assert_eq!(
        format!("{:#}", vv[0].0),
        receipt["dot"]["replica"].as_str().unwrap()
    );
    assert_eq!(vv[0].1, Seq(1));

    // Keys are path segments: percent-encoded slashes and spaces are part of the key.
    s.put_ok("default", "a%2Fb%20c", "slashed", None).await;
    let (status, _, resp) = s.read("default", "a%2Fb%20c").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "slashed");
    s.stop().await;
}

#[tokio::test]
async fn missing_and_deleted_keys_read_404_with_a_context() {
    let s = Solo::start(None).await;
    let (status, context, resp) = s.read("default", "nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Even an absent key has a context (empty): writing with it supersedes nothing.
    assert_eq!(decode_context(&context).unwrap(), VersionVector::new());
    let (_, code, message) = error_of(resp).await;
    assert_eq!(code, "not_found");
    assert_eq!(message, "key 'nothing' has no value in table 'default'");

    s.put_ok("default", "k", "v", None).await;
    let resp = s.http.delete(s.key("default", "k")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let receipt: Json = resp.json().await.unwrap();
    assert_eq!(receipt["dot"]["seq"], 2);

    let (status, context, resp) = s.read("default", "k").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(context, receipt["context"].as_str().unwrap());
    assert_eq!(error_of(resp).await.1, "not_found");

    // With ?siblings=true the tombstone is visible, still with 404.
    let resp = s.get("/v1/kv/default/k?siblings=true").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(body["resolved"], serde_json::json!({ "absent": true }));
    assert_eq!(body["siblings"].as_array().unwrap().len(), 1);
    assert_eq!(body["siblings"][0]["tombstone"], true);
    assert!(body["siblings"][0].get("value").is_none());
    s.stop().await;
}

#[tokio::test]
async fn siblings_json_has_region_hlc_and_value() {
    let s = Solo::start(None).await;
    s.put_ok("default", "k", "text", None).await;
    let resp = s.get("/v1/kv/default/k?siblings=true").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let context = header(&resp, CONTEXT_HEADER);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(body["table"], "default");
    assert_eq!(body["key"], "k");
    assert_eq!(body["resolver"], "lww@1");
    assert_eq!(body["resolved"], serde_json::json!({ "value": "text" }));
    assert_eq!(body["context"], context.as_str());
    let sib = &body["siblings"][0];
    assert_eq!(sib["region"], "solo");
    assert_eq!(sib["seq"], 1);
    assert_eq!(sib["tombstone"], false);
    assert_eq!(sib["value"], "text");
    assert!(sib["hlc"].as_str().unwrap().contains('T'));
    assert!(sib["hlc_raw"].as_u64().unwrap() > 0);
    assert_eq!(sib["replica"].as_str().unwrap().len(), 36, "a full UUID");

    // Bytes that are not UTF-8 come back base64 (URL-safe, unpadded) instead of as text.
    let resp = s
        .http
        .put(s.key("default", "bin"))
        .body(vec![0xff, 0x00, 0xfe])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Json = s
        .get("/v1/kv/default/bin?siblings=true")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["siblings"][0]["value_base64"], "_wD-");
    assert!(body["siblings"][0].get("value").is_none());
    assert_eq!(
        body["resolved"],
        serde_json::json!({ "value_base64": "_wD-" })
    );
    s.stop().await;
}

/// The multi-value cycle in one region: two writes with the same old context are concurrent
/// siblings, a third is refused by `max_siblings = 2`, and a write with the context read
/// after both supersedes them.
#[tokio::test]
async fn a_write_with_the_read_context_supersedes_siblings() {
    let s = Solo::start(None).await;
    let (status, c0, _) = s.read("carts", "cart-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let a = s.put_ok("carts", "cart-1", "apple", Some(&c0)).await;
    assert_eq!(a["conflict"], false);
    let b = s.put_ok("carts", "cart-1", "banana", Some(&c0)).await;
    assert_eq!(b["conflict"], true, "B did not see A: they are concurrent");

    // A multi-value read answers JSON with both siblings, in canonical (HLC) order.
    let (status, c2, resp) = s.read("carts", "cart-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&resp, SIBLINGS_HEADER), "2");
    assert!(header(&resp, "content-type").starts_with("application/json"));
    let body: Json = resp.json().await.unwrap();
    assert_eq!(body["resolver"], "multi-value@1");
    assert_eq!(body["resolved"], serde_json::json!({ "siblings": 2 }));
    let values: Vec<&str> = body["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["apple", "banana"]);
    assert!(
        body["siblings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["region"] == "solo")
    );

    // A third concurrent version is past max_siblings = 2.
    let (status, code, message) =
        error_of(s.put("carts", "cart-1", "cherry", Some(&c0)).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code, "too_many_siblings");
    assert!(message.contains("limit is 2"), "{message}");
    assert!(
        message.contains("?siblings=true") && message.contains("write back with its context"),
        "{message}"
    );

    // Writing back with the context read after both resolves them.
    let merged = s.put_ok("carts", "cart-1", "apple+banana", Some(&c2)).await;
    assert_eq!(merged["conflict"], false);
    let (status, _, resp) = s.read("carts", "cart-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&resp, SIBLINGS_HEADER), "1");
    assert_eq!(resp.text().await.unwrap(), "apple+banana");
    s.stop().await;
}

#[tokio::test]
async fn an_empty_context_header_is_a_blind_write() {
    let s = Solo::start(None).await;
    let (_, c0, _) = s.read("carts", "k").await;
    s.put_ok("carts", "k", "one", Some(&c0)).await;
    s.put_ok("carts", "k", "two", Some(&c0)).await;
    // A blind write supersedes everything the region has for the key, siblings included.
    let w = s.put_ok("carts", "k", "three", Some("")).await;
    assert_eq!(w["conflict"], false);
    let (status, _, resp) = s.read("carts", "k").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "three");
    s.stop().await;
}

#[tokio::test]
async fn bad_context_tokens_are_refused_with_400_or_409() {
    let s = Solo::start(None).await;
    let (status, code, message) =
        error_of(s.put("default", "k", "v", Some("not base64!")).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code, "bad_context");
    assert!(message.contains("not URL-safe base64"), "{message}");
    assert!(
        message.contains("send back the x-meridian-context value exactly as a read returned it"),
        "{message}"
    );

    // Base64, but not a version vector (claims one entry, carries none).
    let (status, code, message) = error_of(s.put("default", "k", "v", Some("AQ")).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_context")
    );
    assert!(message.contains("does not decode"), "{message}");

    // A well-formed context covering writes this region has never seen.
    let mut ahead = VersionVector::new();
    ahead.add_dot(&conflict::Dot::new(ReplicaId::from_u128(7), Seq(3)));
    let (status, code, message) = error_of(
        s.put("default", "k", "v", Some(&encode_context(&ahead)))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code, "context_ahead");
    assert!(
        message.contains("has not yet applied everything your context covers"),
        "{message}"
    );
    s.stop().await;
}

#[tokio::test]
async fn key_and_value_limits() {
    let s = Solo::start(None).await;
    let long = "k".repeat(65);
    for resp in [
        s.put("default", &long, "v", None).await,
        s.http.get(s.key("default", &long)).send().await.unwrap(),
        s.http.delete(s.key("default", &long)).send().await.unwrap(),
    ] {
        let (status, code, message) = error_of(resp).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(code, "key_too_large");
        assert_eq!(
            message,
            "the key is 65 bytes and the limit is 64 (limits.max_key_bytes); use a shorter key"
        );
    }
    // At the limit is fine.
    s.put_ok("default", &"k".repeat(64), "v", None).await;

    // One byte over max_value_bytes, and far over it (refused while the body is read).
    let (status, code, message) =
        error_of(s.put("default", "k", &"v".repeat(1025), None).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code, "value_too_large");
    assert!(
        message.contains("1025 bytes")
            && message.contains("limit is 1024 (limits.max_value_bytes)"),
        "{message}"
    );
    let (status, code, message) =
        error_of(s.put("default", "k", &"v".repeat(100_000), None).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code, "value_too_large");
    assert!(
        message.contains("more than the limit of 1024 bytes (limits.max_value_bytes)"),
        "{message}"
    );
    s.put_ok("default", "k", &"v".repeat(1024), None).await;
    s.stop().await;
}

#[tokio::test]
async fn unknown_tables_are_404_and_say_how_to_add_them() {
    let s = Solo::start(None).await;
    let resps = [
        s.put("nope", "k", "v", None).await,
        s.http.get(s.key("nope", "k")).send().await.unwrap(),
        s.http.delete(s.key("nope", "k")).send().await.unwrap(),
    ];
    for resp in resps {
        let (status, code, message) = error_of(resp).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(code, "unknown_table");
        assert_eq!(
            message,
            "table 'nope' is not configured; add it under [tables] in regions.toml or use one of the configured tables"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let s = Solo::start(None).await;
    let (status, code, message) = error_of(s.get("/v1/kv/default/k?siblings=maybe").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_query")
    );
    assert!(message.contains("siblings"), "{message}");

    let (status, code, _) = error_of(s.get("/v1/conflicts?limit=lots").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_query")
    );

    // A key that is not UTF-8 once percent-decoded.
    let (status, code, message) = error_of(s.get("/v1/kv/default/%FF").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_path")
    );
    assert!(message.contains("UTF-8"), "{message}");

    let (status, code, message) = error_of(s.get("/v1/nothing-here").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "no_route"));
    assert!(message.contains("/v1/kv/{table}/{key}"), "{message}");

    let resp = s.http.post(s.key("default", "k")).send().await.unwrap();
    assert_eq!(header(&resp, "allow"), "GET,HEAD,PUT,DELETE");
    let (status, code, message) = error_of(resp).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    assert_eq!(
        message,
        "POST /v1/kv/default/k is not supported; the Allow header lists the methods this route accepts"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_bearer_token_protects_everything_but_healthz() {
    let s = Solo::start(Some("s3cret")).await;
    let health = s.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.unwrap(), "ok\n");

    for path in [
        "/v1/status",
        "/v1/conflicts",
        "/metrics",
        "/v1/kv/default/k",
    ] {
        let (status, code, message) = error_of(s.get(path).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(code, "unauthorized");
        assert!(
            message.contains("Authorization: Bearer <token>")
                && message.contains("MERIDIAN_API_TOKEN"),
            "{message}"
        );
    }
    let wrong = s
        .http
        .get(s.url("/v1/status"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let refused = s.put("default", "k", "v", None).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let ok = s
        .http
        .get(s.url("/v1/status"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let put = s
        .http
        .put(s.key("default", "k"))
        .bearer_auth("s3cret")
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn metrics_count_writes_and_fsyncs() {
    let s = Solo::start(None).await;
    s.put_ok("default", "a", "1", None).await;
    s.put_ok("default", "b", "2", None).await;
    let resp = s.get("/metrics").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(header(&resp, "content-type").starts_with("application/openmetrics-text"));
    let text = resp.text().await.unwrap();
    let sample = |name: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("no sample of {name} in:\n{text}"));
        assert!(line.contains(r#"region="solo""#), "{line}");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(sample("meridian_client_writes_total"), 2);
    // Group commit may put both writes in one fsync; each write was durable before its reply.
    let fsyncs = sample("meridian_fsyncs_total");
    assert!((1..=2).contains(&fsyncs), "{fsyncs}");
    assert_eq!(sample("meridian_keys"), 2);
    // The write log and its retention bound (issue 13, item 2): no peer, nothing to pass.
    assert_eq!(sample("meridian_log_retention_bytes"), 1 << 30);
    assert!(
        sample("meridian_log_bytes") > 8,
        "records after the segment's header"
    );
    assert_eq!(sample("meridian_log_segments"), 1);
    assert_eq!(sample("meridian_needs_snapshot"), 0);
    // Snapshot bootstrap (issue 13, item 3): none under way, none served or installed.
    assert_eq!(sample("meridian_bootstrapping"), 0);
    assert_eq!(sample("meridian_bootstrap_keys_received"), 0);
    assert_eq!(sample("meridian_bootstrap_keys_total"), 0);
    assert_eq!(sample("meridian_snapshot_chunks_sent_total"), 0);
    assert_eq!(sample("meridian_snapshots_installed_total"), 0);
    for kind in ["snapshot_started", "snapshot_installed"] {
        let line = format!(r#"meridian_alarms_total{{region="solo",kind="{kind}"}} 0"#);
        assert!(text.contains(&line), "no {line} in:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
    s.stop().await;
}

#[tokio::test]
async fn status_digest_is_hex_sha256_and_follows_the_data() {
    let s = Solo::start(None).await;
    s.put_ok("default", "a", "1", None).await;
    let first: serde_json::Value = s.get("/v1/status/digest").await.json().await.unwrap();
    let hex = first["digest"].as_str().unwrap();
    assert_eq!(hex.len(), 64, "{first}");
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
    assert_eq!(first["region"], "solo");
    assert_eq!(first["applied"]["solo"], 1, "{first}");
    let again: serde_json::Value = s.get("/v1/status/digest").await.json().await.unwrap();
    assert_eq!(first["digest"], again["digest"], "no write, same digest");
    s.put_ok("default", "b", "2", None).await;
    let after: serde_json::Value = s.get("/v1/status/digest").await.json().await.unwrap();
    assert_ne!(first["digest"], after["digest"]);
    s.stop().await;
}

#[tokio::test]
async fn status_shows_the_region_its_writes_and_no_peers() {
    let s = Solo::start(None).await;
    let w = s.put_ok("default", "a", "1", None).await;
    s.put_ok("carts", "b", "2", None).await;
    let resp = s.get("/v1/status").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let st: Json = resp.json().await.unwrap();
    assert_eq!(st["region"], "solo");
    assert_eq!(st["replica"], w["dot"]["replica"]);
    assert_eq!(st["keys"], 2);
    assert!(st["hlc"].as_str().unwrap().contains('T'));
    assert_eq!(
        st["applied"],
        serde_json::json!([{ "region": "solo", "replica": w["dot"]["replica"], "seq": 2 }])
    );
    assert_eq!(st["peers"], serde_json::json!([]));
    let log = &st["log"];
    assert_eq!(log["retention_bytes"], 1u64 << 30);
    assert_eq!(log["segments"], 1);
    assert!(log["bytes"].as_u64().unwrap() > 8, "{log}");
    // With no peer, every write durable here is stable: the log may drop it.
    assert_eq!(
        log["start"],
        serde_json::json!([{ "region": "solo", "replica": w["dot"]["replica"], "seq": 2 }])
    );
    assert_eq!(st["alarms"]["needs_snapshot"], serde_json::json!([]));
    assert_eq!(
        st["bootstrap"],
        Json::Null,
        "no snapshot bootstrap under way"
    );
    assert_eq!(st["counters"]["snapshots_installed"], 0);
    // The document is `leader::status::Status`, field for field, both ways.
    let typed: leader::status::Status = serde_json::from_value(st.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), st);
    let c = &st["counters"];
    assert_eq!(c["client_writes"], 2);
    assert_eq!(c["remote_applied"], 0);
    assert_eq!(c["conflicts"], 0);
    assert!(c["fsyncs"].as_u64().unwrap() >= 1);
    for counter in [
        "duplicates",
        "persists",
        "writes_sent",
        "writes_relayed",
        "resyncs",
        "gaps_dropped",
    ] {
        assert!(c[counter].is_u64(), "counters.{counter} in {st}");
    }
    s.stop().await;
}

/// One page of `GET /v1/conflicts{query}`.
async fn conflict_page(s: &Solo, query: &str) -> Json {
    let resp = s.get(&format!("/v1/conflicts{query}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

/// Makes one conflict on `table/key`: a blind write, then a write with the empty context
/// read before it (so it did not see the first).
async fn make_conflict(s: &Solo, table: &str, key: &str) {
    let (_, c0, _) = s.read(table, key).await;
    s.put_ok(table, key, "first", Some(&c0)).await;
    let second = s.put_ok(table, key, "second", Some(&c0)).await;
    assert_eq!(second["conflict"], true);
}

#[tokio::test]
async fn conflicts_are_listed_newest_first_with_limit_table_and_paging() {
    let s = Solo::start(None).await;
    for (table, key) in [
        ("default", "k1"),
        ("carts", "c1"),
        ("default", "k2"),
        ("carts", "c2"),
    ] {
        make_conflict(&s, table, key).await;
    }
    let keys = |body: &Json| -> Vec<String> {
        body["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["key"].as_str().unwrap().to_owned())
            .collect()
    };

    let all = conflict_page(&s, "").await;
    assert_eq!(keys(&all), ["c2", "k2", "c1", "k1"]);
    assert_eq!(all["total_logged"], 4);
    let ids: Vec<u64> = all["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // The shape of one record: the multi-value conflict keeps both writes.
    let c2 = &all["conflicts"][0];
    assert_eq!(c2["table"], "carts");
    assert_eq!(c2["resolver"], "multi-value@1");
    assert_eq!(c2["outcome"], "2 siblings kept for readers");
    assert!(c2["detected_ms"].as_u64().unwrap() > 0);
    let sibs = c2["siblings"].as_array().unwrap();
    assert_eq!(sibs.len(), 2);
    assert!(
        sibs.iter()
            .all(|x| x["region"] == "solo" && x["kept"] == true)
    );
    assert!(
        sibs[0]["seq"].as_u64() > sibs[1]["seq"].as_u64(),
        "the new write first"
    );
    // Last-write-wins resolves silently, but the conflict is logged with the loser.
    let k2 = &all["conflicts"][1];
    assert_eq!(k2["resolver"], "lww@1");
    let kept: Vec<&Json> = k2["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| &x["kept"])
        .collect();
    assert_eq!(kept, [&Json::Bool(true), &Json::Bool(false)]);
    assert!(
        k2["outcome"]
            .as_str()
            .unwrap()
            .starts_with("resolved to one value")
    );

    // Paging: `limit`, then `before` = the previous page's `next_before`.
    let first = conflict_page(&s, "?limit=2").await;
    assert_eq!(keys(&first), ["c2", "k2"]);
    assert_eq!(first["next_before"], ids[1]);
    let second = conflict_page(&s, &format!("?limit=2&before={}", ids[1])).await;
    assert_eq!(keys(&second), ["c1", "k1"]);
    let rest = conflict_page(&s, &format!("?limit=2&before={}", ids[3])).await;
    assert_eq!(keys(&rest), Vec::<String>::new());
    assert_eq!(rest["next_before"], Json::Null);

    let carts = conflict_page(&s, "?table=carts").await;
    assert_eq!(keys(&carts), ["c2", "c1"]);
    let one = conflict_page(&s, "?table=default&limit=1").await;
    assert_eq!(keys(&one), ["k2"]);
    assert_eq!(
        keys(&conflict_page(&s, "?table=nope").await),
        Vec::<String>::new()
    );
    s.stop().await;
}

#[tokio::test]
async fn keys_are_listed_page_by_page_with_a_prefix() {
    let s = Solo::start(None).await;
    for key in ["a1", "a2", "a3", "b1"] {
        s.put_ok("default", key, "v", None).await;
    }
    let del = s.http.delete(s.key("default", "a2")).send().await.unwrap();
    assert!(del.status().is_success());
    let page: Json = s
        .get("/v1/kv/default?prefix=a&limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["keys"], serde_json::json!(["a1"]));
    assert_eq!(page["next"], "a1");
    let page: Json = s
        .get("/v1/kv/default?prefix=a&limit=1&after=a1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["keys"],
        serde_json::json!(["a3"]),
        "a deleted key is not listed"
    );
    let page: Json = s
        .get("/v1/kv/default?prefix=a&limit=10&after=a3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["keys"], serde_json::json!([]));
    assert_eq!(page["next"], Json::Null, "the last page");
    let all: Json = s.get("/v1/kv/default").await.json().await.unwrap();
    assert_eq!(all["keys"], serde_json::json!(["a1", "a3", "b1"]));
    assert_eq!(all["next"], Json::Null);
    let (status, code, _) = error_of(s.get("/v1/kv/nope").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "unknown_table")
    );
    let (status, code, _) = error_of(s.get("/v1/kv/default?limit=x").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{code}");
    s.stop().await;
}

/// `POST /v1/kv/{table}/{key}/add?by=n`: Redis's INCRBY over HTTP. The reply carries the
/// counter's total; a table without counters, a bad `by` and an overflow are refused with a
/// clear code and nothing written.
#[tokio::test]
async fn additions_to_a_counter_over_http_answer_the_total() {
    let cluster = Cluster::solo()
        .register(std::sync::Arc::new(conflict::examples::Counter))
        .table("counters", "counter")
        .start()
        .await;
    let base = cluster.api_url(SOLO);
    let http = reqwest::Client::new();
    let add = |table: &str, query: &str| {
        let url = format!("{base}/v1/kv/{table}/stock/add{query}");
        let http = http.clone();
        async move {
            let resp = http.post(url).send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Json>().await.unwrap())
        }
    };
    let (status, body) = add("counters", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 1);
    let (_, body) = add("counters", "?by=-5&durability=local").await;
    assert_eq!(body["total"], -4, "{body}");
    assert!(
        body["context"].is_string() && body["dot"]["seq"].is_u64(),
        "{body}"
    );
    let (status, body) = add("default", "?by=2").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "not_a_counter");
    let (status, body) = add("counters", "?by=two").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_query"))
    );
    let (status, body) = add("counters", "?by=-9223372036854775807").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("overflow"),
        "{body}"
    );
    let (_, body) = add("counters", "?by=0").await;
    assert_eq!(
        body["total"], -4,
        "nothing was written by the refused additions"
    );
    cluster.shutdown().await;
}
