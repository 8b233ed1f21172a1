//! One participant session over TCP (or TLS), from connect through sign-on.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use codec::signon::{participant_session_macs, sign_on_accepted, sign_on_request};
use codec::{FrameDecoder, FrameEncoder, InstitutionId, Message, MessageRef};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::participants::Participant;

/// The receiving half of a participant link: TCP or TLS.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The sending half.
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A signed-on session, split into its two directions.
#[derive(Debug)]
pub struct Client {
    pub participant: InstitutionId,
    pub session_id: u64,
    pub reader: FrameReader,
    pub writer: FrameWriter,
}

pub struct FrameReader {
    stream: ReadHalf,
    decoder: FrameDecoder,
}

pub struct FrameWriter {
    stream: WriteHalf,
    encoder: FrameEncoder,
    /// Bytes of the encoder already written by a flush that was interrupted.
    sent: usize,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameReader {{ buffered: {} }}", self.decoder.buffered())
    }
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameWriter {{ queued: {} }}", self.encoder.len())
    }
}

impl FrameReader {
    /// Bytes received but not yet decoded (zero: the next `next` will read the socket).
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// Reads until one frame is complete and hands it to `f`. Errors on end of stream or on
    /// a frame the codec refuses.
    pub async fn next<R>(&mut self, f: impl FnOnce(MessageRef<'_>) -> R) -> anyhow::Result<R> {
        loop {
            // Two-step to satisfy the borrow checker: check for a frame, then borrow it.
            if self.decoder.buffered() > 0 {
                match self.decoder.decode() {
                    Ok(Some(frame)) => return Ok(f(frame.message)),
                    Ok(None) => {}
                    Err(error) => bail!("the switch sent a frame we cannot decode: {error}"),
                }
            }
            let count = self.stream.read(self.decoder.spare()).await.context("reading from the switch")?;
            if count == 0 {
                bail!("the switch closed the connection");
            }
            self.decoder.commit(count);
        }
    }
}

impl FrameReader {
    /// Hands every complete frame to `f`, reading once first if none is buffered; returns
    /// how many frames it handed (at least one). Errors on end of stream or on a frame the
    /// codec refuses.
    pub async fn read_batch(&mut self, mut f: impl FnMut(MessageRef<'_>)) -> anyhow::Result<usize> {
        loop {
            let mut frames = 0;
            loop {
                match self.decoder.decode() {
                    Ok(Some(frame)) => {
                        f(frame.message);
                        frames += 1;
                    }
                    Ok(None) => break,
                    Err(error) => bail!("the switch sent a frame we cannot decode: {error}"),
                }
            }
            if frames > 0 {
                return Ok(frames);
            }
            let count = self.stream.read(self.decoder.spare()).await.context("reading from the switch")?;
            if count == 0 {
                bail!("the switch closed the connection");
            }
            self.decoder.commit(count);
        }
    }
}

impl FrameWriter {
    /// Queues a frame; nothing is sent until [`FrameWriter::flush`].
    pub fn queue(&mut self, message: &Message) -> anyhow::Result<()> {
        self.encoder.encode(message).context("encoding a frame")
    }

    /// Sends every queued frame. Cancel-safe: dropped half-way (to read meanwhile), it
    /// goes on from where it stopped at the next call, and frames queued meanwhile follow.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        while self.sent < self.encoder.len() {
            let count = self.stream.write(&self.encoder.bytes()[self.sent..]).await.context("writing to the switch")?;
            if count == 0 {
                bail!("the switch stopped taking bytes");
            }
            self.sent += count;
        }
        if !self.encoder.is_empty() {
            // A TLS stream buffers records until flushed; TCP's flush does nothing.
            self.stream.flush().await.context("writing to the switch")?;
            self.encoder.clear();
            self.sent = 0;
        }
        Ok(())
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.encoder.is_empty()
    }

    pub async fn send(&mut self, message: &Message) -> anyhow::Result<()> {
        self.queue(message)?;
        self.flush().await
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        self.stream.shutdown().await.context("closing the connection")
    }
}

impl Client {
    /// Connects over plain TCP, answers the challenge with a proof of `key`, and checks
    /// the switch's proof.
    pub async fn connect(
        address: SocketAddr,
        participant: InstitutionId,
        key_id: u16,
        key: &[u8],
    ) -> anyhow::Result<Self> {
        let stream = tcp(address).await?;
        let (read, write) = stream.into_split();
        Self::sign_on(Box::new(read), Box::new(write), participant, key_id, key).await
    }

    /// Signs on over `stream`, already connected (a socket with options of its own).
    pub async fn sign_on_over(
        stream: TcpStream,
        participant: InstitutionId,
        key_id: u16,
        key: &[u8],
    ) -> anyhow::Result<Self> {
        let (read, write) = stream.into_split();
        Self::sign_on(Box::new(read), Box::new(write), participant, key_id, key).await
    }

    /// As [`Client::connect`], from the local address `source` (a participant host with
    /// several addresses; tests that play several hosts on loopback's 127.0.0.0/8).
    pub async fn connect_from(
        address: SocketAddr,
        source: std::net::IpAddr,
        participant: InstitutionId,
        key_id: u16,
        key: &[u8],
    ) -> anyhow::Result<Self> {
        let stream = tcp_from(address, source).await?;
        let (read, write) = stream.into_split();
        Self::sign_on(Box::new(read), Box::new(write), participant, key_id, key).await
    }

    /// Connects as `participant`: over TLS with its certificate when it has one, else
    /// over plain TCP; then signs on.
    pub async fn connect_as(address: SocketAddr, participant: &Participant) -> anyhow::Result<Self> {
        let Some(tls) = &participant.tls else {
            return Self::connect(address, participant.id, participant.key_id, &participant.key).await;
        };
        let stream = tls.connect(address, tcp(address).await?).await?;
        let (read, write) = tokio::io::split(stream);
        Self::sign_on(Box::new(read), Box::new(write), participant.id, participant.key_id, &participant.key).await
    }

    async fn sign_on(
        read: ReadHalf,
        write: WriteHalf,
        participant: InstitutionId,
        key_id: u16,
        key: &[u8],
    ) -> anyhow::Result<Self> {
        let mut reader = FrameReader { stream: read, decoder: FrameDecoder::default() };
        let mut writer = FrameWriter { stream: write, encoder: FrameEncoder::default(), sent: 0 };

        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).context("drawing a nonce")?;
        let (challenge, request) = reader
            .next(|message| match message {
                MessageRef::SignOnChallenge(_) => {
                    let Message::SignOnChallenge(challenge) = message.to_message() else { unreachable!() };
                    let request = sign_on_request(&challenge, participant, key_id, key, nonce);
                    Ok((challenge, request))
                }
                other => Err(anyhow::anyhow!("expected a sign-on challenge, got {:?}", other.kind())),
            })
            .await??;
        writer.send(&Message::SignOnRequest(request.clone())).await?;
        let (session_id, macs) = reader
            .next(|message| match message {
                MessageRef::SignOnResult(result) => {
                    let code = result.code.to_native();
                    if sign_on_accepted(&challenge, &request, key, result) {
                        // With frame MACs, every later frame either way carries a tag.
                        Ok((result.session_id.to_native(), participant_session_macs(&challenge, &request, key, result)))
                    } else if code == 0 {
                        Err(anyhow::anyhow!("the switch approved but could not prove the key: not our switch"))
                    } else {
                        Err(anyhow::anyhow!("sign-on refused with reply code {code}"))
                    }
                }
                other => Err(anyhow::anyhow!("expected a sign-on result, got {:?}", other.kind())),
            })
            .await??;
        if let Some(macs) = macs {
            reader.decoder.set_mac(Some(macs.to_participant));
            writer.encoder.set_mac(Some(macs.to_switch));
        }
        Ok(Self { participant, session_id, reader, writer })
    }
}

async fn tcp(address: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(address).await.with_context(|| format!("connecting to the switch at {address}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A TCP connection to `address` from the local address `source`.
pub async fn tcp_from(address: SocketAddr, source: std::net::IpAddr) -> anyhow::Result<TcpStream> {
    let socket = if source.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("binding {source}"))?;
    let stream = socket
        .connect(address)
        .await
        .with_context(|| format!("connecting to the switch at {address} from {source}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
