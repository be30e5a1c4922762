//! Port-forward logic both transports share: the `?port=` query of WebSocket requests, dialing the
//! pod's port through the [`Backend`] and copying bytes both ways, and the kubelet's error text.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::backend::Backend;

/// The text written on a port's error stream when forwarding fails (kubelet's wording; clients
/// such as kubectl print it as "an error occurred forwarding L -> P: <this>").
pub fn error_message(port: u16, pod: &str, err: &dyn std::fmt::Display) -> String {
    format!("error forwarding port {port} to pod {pod}, uid : {err}")
}

/// Most ports of one WebSocket port-forward: each needs two one-byte channel numbers.
pub const MAX_WS_PORTS: usize = 128;

/// The ports of a WebSocket port-forward: every `port=` query value, each a comma-separated list
/// of ports 1-65535 (kubelet's `BuildV4Options`), at most [`MAX_WS_PORTS`].
pub fn query_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key != "port" {
            continue;
        }
        for p in value.split(',') {
            let port: u16 = p
                .trim()
                .parse()
                .map_err(|e| format!("unable to parse {p:?} as a port: {e}"))?;
            if port == 0 {
                return Err(format!("port {p:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    if ports.len() > MAX_WS_PORTS {
        return Err(format!(
            "{} ports requested; one WebSocket port-forward carries at most {MAX_WS_PORTS}",
            ports.len()
        ));
    }
    Ok(ports)
}

/// Dials `port` in pod `pod` and copies between it and the client's `data` stream until the pod
/// side closes (the client's EOF only half-closes the pod connection). `Err` carries the text for
/// the client's error stream.
pub async fn forward<S>(
    backend: Arc<dyn Backend>,
    pod: String,
    port: u16,
    data: S,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let tcp = backend
        .port_forward(pod.clone(), port)
        .await
        .map_err(|e| error_message(port, &pod, &e))?;
    let (mut tcp_r, mut tcp_w) = tcp.into_split();
    let (mut data_r, mut data_w) = tokio::io::split(data);
    let up = async {
        if let Err(e) = tokio::io::copy(&mut data_r, &mut tcp_w).await {
            tracing::debug!(%pod, port, error = %e, "port-forward: client to pod copy ended");
        }
        // The client is done sending; the pod may still answer.
        let _ = tcp_w.shutdown().await;
        std::future::pending::<()>().await
    };
    let down = async {
        if let Err(e) = tokio::io::copy(&mut tcp_r, &mut data_w).await {
            tracing::debug!(%pod, port, error = %e, "port-forward: pod to client copy ended");
        }
        let _ = data_w.shutdown().await;
    };
    tokio::select! {
        () = down => {}
        () = up => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_from_query() {
        assert_eq!(query_ports(Some("port=80")), Ok(vec![80]));
        assert_eq!(
            query_ports(Some("port=80,8080&x=1&port=443")),
            Ok(vec![80, 8080, 443])
        );
        assert!(query_ports(None).unwrap_err().contains("required"));
        assert!(query_ports(Some("port=0")).unwrap_err().contains("> 0"));
        assert!(query_ports(Some("port=70000")).is_err());
        assert!(query_ports(Some("port=http")).is_err());
        let many: Vec<String> = (1..=129).map(|p| p.to_string()).collect();
        let query = format!("port={}", many.join(","));
        assert!(query_ports(Some(&query))
            .unwrap_err()
            .contains("at most 128"));
        let query = format!("port={}", many[..128].join(","));
        assert_eq!(query_ports(Some(&query)).map(|p| p.len()), Ok(128));
    }

    #[test]
    fn error_text_names_port_and_pod() {
        let msg = error_message(8080, "abc", &"connection refused");
        assert_eq!(
            msg,
            "error forwarding port 8080 to pod abc, uid : connection refused"
        );
    }
}
