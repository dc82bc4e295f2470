//! The admin listener: `/status` (JSON) and `/metrics` (Prometheus text).

mod common;
use std::time::Duration;

#[tokio::test]
async fn status_and_metrics_report_requests_upstreams_and_reloads() {
    let up = common::upstream("a").await;
    let admin = common::free_addr();
    let yaml = format!(
        r#"
admin: {{ listen: "{admin}" }}
upstreams:
  app: {{ servers: ["{}"] }}
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    server_name: [site.test]
    locations:
      - location: /api/
        proxy_pass: http://app
      - location: /
        return: 200 "v1"
"#,
        up.addr
    );
    let gw = common::start_one(&yaml, 1).await;
    let shared = gw.running.as_ref().unwrap().shared.clone();
    let _watcher = ginx::reload::spawn_watcher(shared, gw.dir.path().join("ginx.yaml")).unwrap();
    for _ in 0..3 {
        assert_eq!(
            common::get(gw.addr(0), "site.test", "/api/x").await.status,
            200
        );
    }
    assert_eq!(common::get(gw.addr(0), "site.test", "/").await.status, 200);

    let metrics = common::get(admin, "admin", "/metrics").await.text();
    assert!(
        metrics.contains(
            "ginx_requests_total{server=\"site.test\",location=\"/api/\",status=\"2xx\"} 3"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("ginx_upstream_response_seconds_count{upstream=\"app\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("ginx_config_generation 1"), "{metrics}");
    assert!(
        metrics.contains("# TYPE ginx_active_connections gauge"),
        "{metrics}"
    );

    // A bad save: /status says so, with the position; the metrics count it.
    std::fs::write(
        gw.dir.path().join("ginx.yaml"),
        yaml.replace("{p0}", &gw.ports[0].to_string())
            .replace("return: 200", "retrun: 200"),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + common::IO_LIMIT;
    let status = loop {
        let text = common::get(admin, "admin", "/status").await.text();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        if json["reloads"]["failed"] == 1 {
            break json;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failed reload never showed: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["generation"], 1);
    assert_eq!(status["last_reload"]["ok"], false);
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(
        error.contains("ginx.yaml:12:9: unknown key \"retrun\" (did you mean \"return\"?)"),
        "{error}"
    );
    assert_eq!(status["files"].as_array().unwrap().len(), 1);
    assert_eq!(status["upstreams"][0]["name"], "app");
    assert_eq!(status["upstreams"][0]["servers"][0]["healthy"], true);
    assert_eq!(status["upstreams"][0]["servers"][0]["in_flight"], 0);
    let metrics = common::get(admin, "admin", "/metrics").await.text();
    assert!(
        metrics.contains("ginx_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    // The old configuration still serves.
    assert_eq!(
        common::answer(gw.addr(0), "site.test", "/").await,
        (200, "v1".into())
    );
    gw.stop().await;
}

#[tokio::test]
async fn metrics_say_they_are_openmetrics() {
    let admin = common::free_addr();
    let yaml = format!("admin: {{ listen: \"{admin}\" }}\nservers:\n  - listen: [\"127.0.0.1:{{p0}}\"]\n    locations: [{{ location: /, return: 204 }}]\n");
    let gw = common::start_one(&yaml, 1).await;
    let r = common::get(admin, "admin", "/metrics").await;
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(r.text().ends_with("# EOF\n"), "{}", r.text());
    assert_eq!(common::get(admin, "admin", "/nothing").await.status, 404);
    gw.stop().await;
}
