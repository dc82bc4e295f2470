//! WebSocket through ginx: a real client and a real server (tokio-tungstenite)
//! exchange frames over the spliced connection.

// The handshake callback's error type is tungstenite's, not ours.
#![allow(clippy::result_large_err)]

mod common;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server: answers each text or binary frame with "echo: ".
async fn echo_server() -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (paths_tx, paths_rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let paths = paths_tx.clone();
            tokio::spawn(async move {
                let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                                resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    let _ = paths.try_send(req.uri().to_string());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(t) => Message::text(format!("echo: {t}")),
                        Message::Binary(b) => Message::binary([b"echo: ".as_slice(), &b].concat()),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, paths_rx)
}

#[tokio::test]
async fn websocket_frames_pass_both_ways() {
    let (upstream, mut paths) = echo_server().await;
    let yaml = format!(
        r#"
upstreams:
  ws: {{ servers: ["{upstream}"] }}
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    server_name: [ws.test]
    locations:
      - location: /ws/
        proxy_pass: http://ws
"#
    );
    let gw = common::start_one(&yaml, 1).await;
    let stream = tokio::net::TcpStream::connect(gw.addr(0)).await.unwrap();
    let (mut ws, response) = tokio::time::timeout(
        common::IO_LIMIT,
        tokio_tungstenite::client_async("ws://ws.test/ws/chat?room=1", stream),
    )
    .await
    .expect("handshake in time")
    .expect("handshake through ginx");
    assert_eq!(response.status(), 101);
    assert_eq!(paths.recv().await.as_deref(), Some("/ws/chat?room=1"));

    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let reply = tokio::time::timeout(common::IO_LIMIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply, Message::text(format!("echo: hello {i}")));
    }
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let reply = tokio::time::timeout(common::IO_LIMIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.into_data().len(), big.len() + 6);
    ws.close(None).await.unwrap();
    gw.stop().await;
}
