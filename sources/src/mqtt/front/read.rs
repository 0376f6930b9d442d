//! Reading whole MQTT packets from a connection, with a read buffer that
//! grows while a connection is busy and shrinks when it is quiet.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::packet::{self, Header};

use super::serve::Closed;

/// Reads one whole packet (at most `max` bytes); `None` if the peer closed
/// first.
pub(super) async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<(Header, BytesMut)>, Closed> {
    loop {
        if let Some(p) = packet::split_packet(buf)? {
            return Ok(Some(p));
        }
        if let Some(h) = packet::header(buf)? {
            if h.total() > max {
                return Err(Closed::Refused(format!(
                    "a {}-byte first packet",
                    h.total()
                )));
            }
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Spare room for a connection's next read: a few hundred bytes for a quiet
/// device, growing (up to `MAX`) while reads fill what there is, so that a
/// busy connection is relayed in few large reads and writes instead of many
/// small ones (with no room left, a read into a `BytesMut` gets 64 bytes),
/// and shrinking again when reads come back small, so that a device that
/// once sent a burst does not keep 64 KiB buffers for good.
pub(super) struct ReadRoom {
    pub(super) want: usize,
}

impl ReadRoom {
    const MIN: usize = 512;
    const MAX: usize = 64 * 1024;

    /// Reads what `rd` has into `buf`; `false` at the end of the stream.
    pub(super) async fn read<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        buf: &mut BytesMut,
    ) -> std::io::Result<bool> {
        self.fit(buf);
        if buf.capacity() - buf.len() < self.want {
            buf.reserve(self.want);
        }
        let spare = buf.capacity() - buf.len();
        let n = rd.read_buf(buf).await?;
        if n == spare {
            self.want = (self.want * 2).min(Self::MAX);
        } else if n <= spare / 8 {
            self.want = (self.want / 2).max(Self::MIN);
        }
        Ok(n > 0)
    }

    /// Lets an empty buffer's room go when it is well over what reads need.
    pub(super) fn fit(&self, buf: &mut BytesMut) {
        if buf.is_empty() && buf.capacity() > 2 * self.want {
            *buf = BytesMut::new();
        }
    }
}

impl Default for ReadRoom {
    fn default() -> Self {
        ReadRoom { want: Self::MIN }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_busy_connection_is_read_in_few_large_reads() {
        let (mut device, mut front) = tokio::io::duplex(1 << 20);
        let sent: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        device.write_all(&sent).await.unwrap();
        drop(device);
        let (mut room, mut buf, mut reads) = (ReadRoom::default(), BytesMut::new(), 0);
        let (mut got, mut peak) = (Vec::new(), 0);
        while room.read(&mut front, &mut buf).await.unwrap() {
            reads += 1;
            peak = peak.max(room.want);
            got.extend_from_slice(&buf);
            buf.clear();
        }
        assert_eq!(got, sent);
        // 512 B, 1 KiB, ... 32 KiB, then 64 KiB at a time: 7 + 4 reads
        // (a buffer without spare room reads 64 bytes: 4,096 reads).
        assert!(reads <= 11, "{reads} reads");
        assert_eq!(peak, ReadRoom::MAX);
    }

    #[tokio::test]
    async fn a_burst_s_room_goes_when_the_device_is_quiet_again() {
        let (mut device, mut front) = tokio::io::duplex(1 << 20);
        let (mut room, mut buf) = (ReadRoom::default(), BytesMut::new());
        device.write_all(&vec![1u8; 512 * 1024]).await.unwrap();
        let (mut got, mut peak) = (0, 0);
        while got < 512 * 1024 {
            assert!(room.read(&mut front, &mut buf).await.unwrap());
            peak = peak.max(room.want);
            got += buf.len();
            buf.clear();
        }
        assert_eq!(peak, ReadRoom::MAX);
        // One small packet at a time, as a quiet device sends them.
        for _ in 0..10 {
            device.write_all(&[0xc0, 0x00]).await.unwrap();
            assert!(room.read(&mut front, &mut buf).await.unwrap());
            assert_eq!(&buf[..], &[0xc0, 0x00]);
            buf.clear();
        }
        assert_eq!(room.want, ReadRoom::MIN);
        assert!(buf.capacity() <= 4 * ReadRoom::MIN, "{}", buf.capacity());
    }
}
