//! TURN over a byte stream (TCP, TLS): cutting the stream into messages and
//! padding what we send.
//!
//! RFC 8656 §12.5: over TCP and TLS a ChannelData message is padded to a
//! multiple of 4 bytes. turn-client-proto 0.7.3 neither pads what it builds
//! nor skips coturn's padding on receive, so one payload whose length is not
//! a multiple of 4 desynchronises the stream. WireGuard's packets happen to
//! be multiples of 4, but the relay self-checks are not, and a codec must
//! not depend on luck: we pad on send and hand the client exactly one
//! unpadded message at a time.

/// Bytes of a STUN header.
const STUN_HEADER: usize = 20;
/// Bytes of a ChannelData header.
const CHANNEL_HEADER: usize = 4;
/// Largest buffered, incomplete message we accept before calling the
/// stream broken (a STUN or ChannelData length field is 16 bits).
const MAX_MESSAGE: usize = STUN_HEADER + 65535 + 3;

/// The stream carried something that is neither STUN nor ChannelData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the TURN stream is out of step (first byte {0:#04x})")]
pub struct OutOfStep(pub u8);

/// Cuts a TURN byte stream into messages.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    start: usize,
}

impl Deframer {
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, without its padding; `Ok(None)` until one
    /// is complete.
    pub fn next_message(&mut self) -> Result<Option<&[u8]>, OutOfStep> {
        let rest = &self.buf[self.start..];
        if rest.len() < CHANNEL_HEADER {
            self.compact();
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let (message, framed) = match rest[0] >> 6 {
            // STUN: the length is a multiple of 4 already.
            0b00 => (STUN_HEADER + len, STUN_HEADER + len),
            0b01 => (
                CHANNEL_HEADER + len,
                (CHANNEL_HEADER + len).next_multiple_of(4),
            ),
            _ => return Err(OutOfStep(rest[0])),
        };
        if rest.len() < framed {
            debug_assert!(framed <= MAX_MESSAGE);
            self.compact();
            return Ok(None);
        }
        let at = self.start;
        self.start += framed;
        Ok(Some(&self.buf[at..at + message]))
    }

    /// Drops what was handed out, so the buffer does not grow.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Bytes waiting for the rest of their message.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Pads a ChannelData message in `buf[..len]` for a stream, in place
/// (`buf` must have room); returns the length to send. STUN messages are
/// left alone.
pub fn pad_for_stream(buf: &mut [u8], len: usize) -> usize {
    let is_channel = buf.first().is_some_and(|b| b >> 6 == 0b01);
    if !is_channel {
        return len;
    }
    let padded = len.next_multiple_of(4).min(buf.len());
    buf[len..padded].fill(0);
    padded
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn channel(n: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0x40 | (n >> 8) as u8, n as u8];
        m.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn padded_channel_data_and_stun_come_out_whole_and_unpadded() {
        let a = channel(0x4000, b"abcde");
        let mut padded = a.clone();
        padded.resize(a.len() + 8, 0xff);
        let n = pad_for_stream(&mut padded, a.len());
        assert_eq!(n, 12);
        assert_eq!(&padded[9..12], &[0, 0, 0]);
        let mut stun = vec![0x01, 0x01, 0x00, 0x04, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        stun.extend_from_slice(&[1, 2, 3, 4]);
        let mut d = Deframer::default();
        let mut stream = padded[..n].to_vec();
        stream.extend_from_slice(&stun);
        // Byte by byte: nothing before a message is complete.
        let mut out = Vec::new();
        for b in &stream {
            d.push(std::slice::from_ref(b));
            while let Some(m) = d.next_message().unwrap() {
                out.push(m.to_vec());
            }
        }
        assert_eq!(out, [a, stun]);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_stream_out_of_step_is_refused() {
        let mut d = Deframer::default();
        d.push(&[0xc0, 0, 0, 0]);
        assert_eq!(d.next_message(), Err(OutOfStep(0xc0)));
    }

    proptest! {
        #[test]
        fn any_split_of_a_stream_of_messages_gives_them_back(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8),
            cuts in proptest::collection::vec(1usize..17, 1..40),
        ) {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for p in &payloads {
                let m = channel(0x4001, p);
                let mut buf = m.clone();
                buf.resize(m.len() + 3, 0);
                let n = pad_for_stream(&mut buf, m.len());
                stream.extend_from_slice(&buf[..n]);
                want.push(m);
            }
            let mut d = Deframer::default();
            let mut got = Vec::new();
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= stream.len() {
                    break;
                }
                let end = (at + c).min(stream.len());
                d.push(&stream[at..end]);
                at = end;
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m.to_vec());
                }
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn the_deframer_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut d = Deframer::default();
            for c in chunks {
                d.push(&c);
                for _ in 0..8 {
                    match d.next_message() {
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
            }
        }
    }
}
