//! One connection's TLS state, driven by the reactor through rustls's unbuffered API: the caller passes the
//! ciphertext it read, receives the plaintext and the records to send, and encrypts outgoing frames into its
//! own buffer. Nothing here allocates buffers that outlive a call.

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, EncryptError};
use rustls::ServerConfig;
use std::fmt;
use std::sync::Arc;

/// Room to reserve beyond the plaintext when encrypting one record: record header, TLS 1.3 content type, AEAD
/// tag, TLS 1.2 explicit nonce, plus a key-update record that may have to go out first; with margin.
pub const RECORD_OVERHEAD: usize = 128;

/// Control states rustls may produce in a row (records to encode, then "transmit"); a bound against a loop.
const MAX_CONTROL_STEPS: usize = 64;

/// A TLS failure on one connection (it is closed; others are unaffected).
#[derive(Debug)]
pub enum TlsError {
    /// The peer broke the protocol, or the handshake failed (bad records, plaintext, unknown SNI, ...).
    Tls(rustls::Error),
    /// The caller's buffer was too small (a bug in the caller's sizing; the connection is closed).
    Buffer(usize),
    /// Application data cannot be sent in this state (handshake not complete, or closed).
    NotWritable,
    /// The record sequence for this key is exhausted (TLS 1.2 after ~2^64 records; rustls closes).
    Exhausted,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Tls(e) => write!(f, "{e}"),
            TlsError::Buffer(n) => write!(f, "output buffer too small ({n} bytes needed)"),
            TlsError::NotWritable => f.write_str("connection not writable"),
            TlsError::Exhausted => f.write_str("record sequence exhausted"),
        }
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Tls(e)
    }
}

/// What [`TlsConnection::read`] did with the ciphertext it was given.
#[derive(Debug)]
pub struct ReadOutcome {
    /// Bytes to remove from the front of the input; the rest (a partial record) must be passed again, unchanged,
    /// at the front of the next call's input.
    pub consumed: usize,
    /// The connection failed; records in `out` (an alert) should still be sent before closing.
    pub error: Option<TlsError>,
    /// The peer sent close_notify: no more data will come.
    pub peer_closed: bool,
}

pub struct TlsConnection {
    conn: UnbufferedServerConnection,
}

impl TlsConnection {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        Ok(TlsConnection {
            conn: UnbufferedServerConnection::new(config)?,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Negotiated protocol version, for logs and tests.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Processes the ciphertext in `incoming` (decrypted in place). Application data is appended to `plain`;
    /// records rustls wants sent (handshake flights, tickets, alerts) are appended to `out`.
    pub fn read(
        &mut self,
        incoming: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> ReadOutcome {
        let mut off = 0;
        loop {
            let status = self.conn.process_tls_records(&mut incoming[off..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(s) => s,
                Err(e) => {
                    off += discard;
                    self.drain_control(out);
                    return ReadOutcome {
                        consumed: off,
                        error: Some(e.into()),
                        peer_closed: false,
                    };
                }
            };
            let mut done = false;
            let mut peer_closed = false;
            let mut error = None;
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(r) => {
                                discard += r.discard;
                                plain.extend_from_slice(r.payload);
                            }
                            Err(e) => {
                                error = Some(e);
                                break;
                            }
                        }
                    }
                }
                ConnectionState::ReadEarlyData(mut early) => {
                    // Not offered (max_early_data_size = 0); drop anything a peer sends regardless.
                    while let Some(record) = early.next_record() {
                        match record {
                            Ok(r) => discard += r.discard,
                            Err(e) => {
                                error = Some(e);
                                break;
                            }
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    if let Err(e) = encode_into(&mut encode, out) {
                        error = Some(rustls::Error::General(e.to_string()));
                    }
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    peer_closed = true;
                    done = true;
                }
                // Handshake waiting for more input, or established with all input consumed.
                _ => done = true,
            }
            off += discard;
            if let Some(e) = error {
                self.drain_control(out);
                return ReadOutcome {
                    consumed: off,
                    error: Some(e.into()),
                    peer_closed: false,
                };
            }
            if done {
                return ReadOutcome {
                    consumed: off,
                    error: None,
                    peer_closed,
                };
            }
        }
    }

    /// Encrypts `data` (one record's worth at most is efficient: the caller passes up to 16 KiB) into `out`,
    /// returning the bytes written. `out` needs `data.len() + RECORD_OVERHEAD` bytes per 16 KiB of data.
    pub fn encrypt(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, TlsError> {
        let mut empty: [u8; 0] = [];
        let mut written = 0;
        // Records rustls queued earlier go first. (A key update rustls queues while encrypting — its own key
        // rotation, or the answer to a peer's request — is written by `encrypt` itself ahead of the data.)
        let mut steps = 0;
        loop {
            steps += 1;
            if steps > MAX_CONTROL_STEPS {
                return Err(TlsError::NotWritable);
            }
            let status = self.conn.process_tls_records(&mut empty);
            match status.state? {
                ConnectionState::WriteTraffic(mut w) => {
                    written += w.encrypt(data, &mut out[written..]).map_err(encrypt_err)?;
                    break;
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    written += e.encode(&mut out[written..]).map_err(encode_err)?;
                }
                ConnectionState::TransmitTlsData(t) => t.done(),
                _ => return Err(TlsError::NotWritable),
            }
        }
        Ok(written)
    }

    /// Writes a close_notify alert into `out` if the connection is established; returns the bytes written.
    pub fn close_notify(&mut self, out: &mut [u8]) -> usize {
        let mut empty: [u8; 0] = [];
        let status = self.conn.process_tls_records(&mut empty);
        match status.state {
            Ok(ConnectionState::WriteTraffic(mut w)) => w.queue_close_notify(out).unwrap_or(0),
            _ => 0,
        }
    }

    /// After an error: collects the alert rustls queued, if any.
    fn drain_control(&mut self, out: &mut Vec<u8>) {
        let mut empty: [u8; 0] = [];
        for _ in 0..MAX_CONTROL_STEPS {
            let status = self.conn.process_tls_records(&mut empty);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    if encode_into(&mut e, out).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => return,
            }
        }
    }
}

/// Appends one handshake or alert record to `out`, sized exactly.
fn encode_into<Data>(
    encode: &mut EncodeTlsData<'_, Data>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    let needed = match encode.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(s)) => s.required_size,
        Err(e) => return Err(e),
    };
    out.resize(start + needed, 0);
    let n = encode.encode(&mut out[start..])?;
    out.truncate(start + n);
    Ok(())
}

fn encrypt_err(e: EncryptError) -> TlsError {
    match e {
        EncryptError::InsufficientSize(s) => TlsError::Buffer(s.required_size),
        _ => TlsError::Exhausted,
    }
}

fn encode_err(e: EncodeError) -> TlsError {
    match e {
        EncodeError::InsufficientSize(s) => TlsError::Buffer(s.required_size),
        EncodeError::AlreadyEncoded => TlsError::NotWritable,
    }
}
