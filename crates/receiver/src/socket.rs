//! A client's socket as the server holds it: with its place in the per-address count, and a
//! close that lets the client read the last answer.
//!
//! Closing a TCP socket that still has unread input makes the kernel send a reset, and a reset
//! can wipe out what the client had not read yet (RFC 9112, section 9.6): the 431 for a header
//! that was cut short, the error frame and Close frame for a message over the size cap whose
//! rest is still arriving. So, once dropped, the socket is shut down for writing (the client
//! sees the end of the answer), and what the client still sends is read and discarded until it
//! closes too, for at most [`LINGER`] and [`LINGER_BYTES`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::per_ip::IpSlot;

/// Longest a closed connection is read from before the socket is released.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes read and discarded from a closed connection.
const LINGER_BYTES: usize = 1 << 20;

/// A connection's I/O: the socket, its address slot (given back when dropped), and a lingering
/// close.
#[derive(Debug)]
pub(crate) struct ClientIo<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// Always `Some` until dropped.
    io: Option<Io>,
    _slot: IpSlot,
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientIo<Io> {
    pub(crate) fn new(io: Io, slot: IpSlot) -> Self {
        ClientIo { io: Some(io), _slot: slot }
    }

    fn io(&mut self) -> io::Result<&mut Io> {
        self.io.as_mut().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for ClientIo<Io> {
    fn drop(&mut self) {
        let Some(io) = self.io.take() else { return };
        // Without a runtime (it is shutting down) the socket just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(io));
        }
    }
}

/// Ends the answer, then reads until the client closes (or the limits): the answer is not
/// reset away. The address slot is already free.
async fn linger<Io: AsyncRead + AsyncWrite + Unpin>(mut io: Io) {
    let _ = tokio::time::timeout(LINGER, async {
        if io.shutdown().await.is_err() {
            return;
        }
        let mut buf = [0u8; 8 * 1024];
        let mut read = 0;
        while read < LINGER_BYTES {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for ClientIo<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_read(cx, buf)
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for ClientIo<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self.io()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(self.io()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_shutdown(cx)
    }
}
