//! The two data paths under one connection loop: tokio's readiness-based sockets, and
//! io_uring's completion-based ones (through `tokio-uring`, which runs the same tokio
//! primitives the shard loop uses, so both share every line above this module).
//!
//! The interface is completion-shaped, the stricter of the two: a read or write owns its
//! buffer until it completes and hands it back. A read in flight is never dropped by the
//! connection loop (with io_uring, dropping it could lose bytes the kernel already
//! delivered): the loop keeps it across iterations until it completes.
//!
//! Invariant: one read and at most one write in flight per connection.

use std::future::Future;
use std::io;
use std::rc::Rc;

use tokio_uring::buf::BoundedBuf;

/// Which data path the shards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Io {
    /// tokio's epoll-based sockets: portable.
    #[default]
    Tokio,
    /// io_uring (Linux 5.11+), falling back to tokio where the kernel refuses it.
    Uring,
}

impl Io {
    /// `Uring` if this kernel lets us set up a ring, else `Tokio` with the reason logged.
    pub fn usable(self) -> Self {
        match self {
            Self::Tokio => Self::Tokio,
            Self::Uring => match io_uring::IoUring::new(8) {
                Ok(_) => Self::Uring,
                Err(error) => {
                    tracing::warn!(%error, "io_uring refused by the kernel: falling back to the tokio data path");
                    Self::Tokio
                }
            },
        }
    }
}

/// A connected participant socket, as the connection loop drives it.
pub trait Transport: Sized + 'static {
    /// Takes over an accepted socket (non-blocking, `TCP_NODELAY` already set).
    fn from_std(stream: std::net::TcpStream) -> io::Result<Self>;
    /// Reads into `buffer[..]` (its length is the most to read); hands the buffer back with
    /// the count (0: the peer closed).
    fn read(self: &Rc<Self>, buffer: Vec<u8>) -> impl Future<Output = (io::Result<usize>, Vec<u8>)> + 'static;
    /// Writes all of `buffer`, handing it back. The future owns what it needs, so a write
    /// stays in flight across turns of the connection loop (which reads meanwhile).
    fn write_all(self: &Rc<Self>, buffer: Vec<u8>) -> impl Future<Output = (io::Result<()>, Vec<u8>)> + 'static;
    /// Ends our direction of the stream (the peer reads end of stream).
    fn shutdown(&self) -> impl Future<Output = io::Result<()>>;
}

impl Transport for tokio::net::TcpStream {
    fn from_std(stream: std::net::TcpStream) -> io::Result<Self> {
        tokio::net::TcpStream::from_std(stream)
    }

    fn read(self: &Rc<Self>, mut buffer: Vec<u8>) -> impl Future<Output = (io::Result<usize>, Vec<u8>)> + 'static {
        let stream = Rc::clone(self);
        async move {
            loop {
                if let Err(error) = stream.readable().await {
                    return (Err(error), buffer);
                }
                match stream.try_read(&mut buffer) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    result => return (result, buffer),
                }
            }
        }
    }

    fn write_all(self: &Rc<Self>, buffer: Vec<u8>) -> impl Future<Output = (io::Result<()>, Vec<u8>)> + 'static {
        let stream = Rc::clone(self);
        async move {
            let mut written = 0;
            while written < buffer.len() {
                if let Err(error) = stream.writable().await {
                    return (Err(error), buffer);
                }
                match stream.try_write(&buffer[written..]) {
                    Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buffer),
                    Ok(count) => written += count,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => return (Err(error), buffer),
                }
            }
            (Ok(()), buffer)
        }
    }

    async fn shutdown(&self) -> io::Result<()> {
        socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write)
    }
}

impl Transport for tokio_uring::net::TcpStream {
    fn from_std(stream: std::net::TcpStream) -> io::Result<Self> {
        // io_uring operations do not need a non-blocking socket, but it does no harm.
        Ok(tokio_uring::net::TcpStream::from_std(stream))
    }

    fn read(self: &Rc<Self>, buffer: Vec<u8>) -> impl Future<Output = (io::Result<usize>, Vec<u8>)> + 'static {
        let stream = Rc::clone(self);
        async move {
            // tokio-uring reads up to a Vec's capacity; the slice bounds it to its length.
            let length = buffer.len();
            let (result, slice) = tokio_uring::net::TcpStream::read(&stream, buffer.slice(..length)).await;
            (result, slice.into_inner())
        }
    }

    fn write_all(self: &Rc<Self>, buffer: Vec<u8>) -> impl Future<Output = (io::Result<()>, Vec<u8>)> + 'static {
        let stream = Rc::clone(self);
        async move { tokio_uring::net::TcpStream::write_all(&stream, buffer).await }
    }

    async fn shutdown(&self) -> io::Result<()> {
        tokio_uring::net::TcpStream::shutdown(self, std::net::Shutdown::Write)
    }
}
