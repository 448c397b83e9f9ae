//! systemd's notification protocol over `$NOTIFY_SOCKET` (sd_notify(3)), std and tokio
//! only: both binaries' units are `Type=notify` with a watchdog (installer/systemd).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Sends `state` (e.g. `READY=1`); false when there is no socket or it failed.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return false;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        match std::os::unix::net::SocketAddr::from_abstract_name(name) {
            Ok(addr) => socket.send_to_addr(state.as_bytes(), &addr),
            Err(e) => Err(e),
        }
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    sent.is_ok()
}

/// Half of `$WATCHDOG_USEC` when the watchdog is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Whether an HTTP server answers `GET /healthz` at `addr` (any status line counts).
pub async fn answers(addr: SocketAddr) -> bool {
    let addr = if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    };
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1."))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Some(true))
    )
}

/// With `$NOTIFY_SOCKET` set: `READY=1` once `addr` answers, then `WATCHDOG=1` every
/// half watchdog period while it still does. Without it: nothing.
pub fn spawn(addr: SocketAddr) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    tokio::spawn(async move {
        while !answers(addr).await {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        notify("READY=1\nSTATUS=serving");
        let Some(every) = watchdog_interval() else {
            return;
        };
        loop {
            tokio::time::sleep(every).await;
            if answers(addr).await {
                notify("WATCHDOG=1");
            }
        }
    });
}
