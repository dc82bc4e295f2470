//! HTTP/2 on both sides, as gRPC uses it: a client speaking h2 (prior
//! knowledge) to an `http2` listener, ginx speaking h2 to an upstream with
//! `protocol: http2`, a call streaming both ways (each request frame is
//! answered before the next is sent) and ending with trailers.

mod common;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use std::convert::Infallible;

type Frames =
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// Frames from a channel, as a streaming body.
fn channel_body(rx: tokio::sync::mpsc::Receiver<Frame<Bytes>>) -> Frames {
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|f| (Ok(f), rx)) },
        );
    StreamBody::new(Box::pin(stream) as futures_util::stream::BoxStream<'static, _>)
}

/// An h2 upstream that echoes each request frame as it comes, then ends with
/// `grpc-status: 0` trailers (and reports the `te` it was sent).
async fn h2_echo_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                        let te = req
                            .headers()
                            .get("te")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("none")
                            .to_string();
                        let (tx, rx) = tokio::sync::mpsc::channel(8);
                        let mut body = req.into_body();
                        tokio::spawn(async move {
                            while let Some(Ok(frame)) = body.frame().await {
                                // An empty DATA frame (end of stream) carries no message.
                                if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
                                    let echo = [b"echo:".as_slice(), data].concat();
                                    if tx.send(Frame::data(Bytes::from(echo))).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            trailers.insert("x-te-seen", http::HeaderValue::from_str(&te).unwrap());
                            let _ = tx.send(Frame::trailers(trailers)).await;
                        });
                        let mut resp = http::Response::new(channel_body(rx));
                        resp.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/grpc"),
                        );
                        Ok::<_, Infallible>(resp)
                    });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
            });
        }
    });
    addr
}

/// The next frame of a body, within the test's time limit.
async fn next(body: &mut Incoming) -> Frame<Bytes> {
    tokio::time::timeout(common::IO_LIMIT, body.frame())
        .await
        .expect("a frame in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_streaming_call_with_trailers_passes_through() {
    let upstream = h2_echo_upstream().await;
    let yaml = format!(
        r#"
upstreams:
  grpc: {{ servers: ["{upstream}"], protocol: http2 }}
servers:
  - listen: ["127.0.0.1:{{p0}} http2"]
    locations:
      - location: /
        proxy_pass: http://grpc
"#
    );
    let gw = common::start_one(&yaml, 1).await;
    let mut sender = common::h2_connect(gw.addr(0)).await;

    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let request = http::Request::builder()
        .method("POST")
        .uri("http://grpc.test/echo.Echo/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(channel_body(rx))
        .unwrap();
    let response = tokio::time::timeout(common::IO_LIMIT, async {
        tx.send(Frame::data(Bytes::from_static(b"one")))
            .await
            .unwrap();
        sender.send_request(request).await.unwrap()
    })
    .await
    .expect("response head in time");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let mut body = response.into_body();

    // Each answer comes back before the next message is sent: streaming both ways.
    assert_eq!(next(&mut body).await.into_data().unwrap(), "echo:one");
    for word in ["two", "three"] {
        tx.send(Frame::data(Bytes::from(word))).await.unwrap();
        let frame = next(&mut body).await;
        assert_eq!(frame.into_data().unwrap(), format!("echo:{word}"));
    }
    drop(tx);
    let trailers = next(&mut body)
        .await
        .into_trailers()
        .expect("trailers at the end");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        trailers["x-te-seen"], "trailers",
        "te: trailers reached the upstream"
    );
    gw.stop().await;
}
