//! Raw HTTP/1.1 over a TCP socket, for what a well-behaved client library will not do: answers
//! read before the body is sent, resets, idle sockets, malformed requests.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads one response (head and a small body) with a deadline; the connection stays open.
pub async fn read_response(stream: &mut TcpStream, within: Duration) -> (u16, String, Value) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("answered in time")
            .expect("readable");
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buffer.len() < end + 4 + length {
                let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                    .await
                    .expect("body in time")
                    .unwrap();
                assert!(n > 0);
                buffer.extend_from_slice(&chunk[..n]);
            }
            let status = head[9..12].parse().unwrap();
            let body =
                serde_json::from_slice(&buffer[end + 4..end + 4 + length]).unwrap_or(Value::Null);
            return (status, head, body);
        }
    }
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        key.eq_ignore_ascii_case(name).then_some(value.trim())
    })
}
