//! The few MQTT 3.1.1 packets the front reads or writes, without I/O.
//!
//! The front splits both directions into whole packets (fixed header and
//! remaining length), reads CONNECT, PUBLISH, PUBREL, SUBSCRIBE and
//! UNSUBSCRIBE, and writes CONNACK, PUBACK, PUBREC, PUBCOMP, PINGRESP,
//! PINGREQ and SUBACK. Everything else passes through as bytes.

use bytes::BytesMut;

pub const CONNECT: u8 = 1;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREL: u8 = 6;
pub const SUBSCRIBE: u8 = 8;
pub const UNSUBSCRIBE: u8 = 10;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// A PINGREQ packet.
pub const PINGREQ_PACKET: [u8; 2] = [0xc0, 0x00];
/// A PINGRESP packet.
pub const PINGRESP_PACKET: [u8; 2] = [0xd0, 0x00];

/// CONNACK return codes (MQTT 3.1.1, 3.2.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnackCode {
    Accepted = 0,
    BadProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUsernameOrPassword = 4,
    NotAuthorized = 5,
}

/// The head of one packet in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The first byte: type in the high nibble, flags in the low one.
    pub byte: u8,
    /// Length of the fixed header (1 + 1..=4 length bytes).
    pub header_len: usize,
    /// Remaining length: the bytes after the fixed header.
    pub remaining: usize,
}

impl Header {
    pub fn kind(&self) -> u8 {
        self.byte >> 4
    }

    pub fn total(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// A malformed packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed MQTT packet: {0}")]
pub struct Malformed(pub &'static str);

/// Reads the fixed header at the start of `buf`: `Ok(None)` if more bytes
/// are needed to know it.
pub fn header(buf: &[u8]) -> Result<Option<Header>, Malformed> {
    let Some(&byte) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(Header {
                byte,
                header_len: 2 + i,
                remaining,
            }));
        }
    }
    Err(Malformed("remaining length longer than four bytes"))
}

/// A cursor over a packet's body.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn u8(&mut self) -> Result<u8, Malformed> {
        let (&b, rest) = self.0.split_first().ok_or(Malformed("packet too short"))?;
        self.0 = rest;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let len = usize::from(self.u16()?);
        if self.0.len() < len {
            return Err(Malformed("string longer than the packet"));
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(s)
    }

    fn str(&mut self) -> Result<&'a str, Malformed> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Malformed("string is not UTF-8"))
    }
}

/// What the front needs of a CONNECT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// 4 for MQTT 3.1.1, 3 for 3.1, 5 for MQTT 5.
    pub level: u8,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub will_topic: Option<String>,
    /// Seconds; 0: no keep-alive.
    pub keep_alive: u16,
    /// The client asks for a fresh session (clean session flag).
    pub clean_session: bool,
    /// Where the keep-alive sits in the body (to rewrite it).
    pub keep_alive_at: usize,
}

/// Parses a CONNECT body (after the fixed header). Only the protocol level
/// is read of an MQTT 5 CONNECT (its properties are not parsed).
pub fn connect(body: &[u8]) -> Result<Connect, Malformed> {
    let mut b = Body(body);
    let name = b.bytes()?;
    if name != b"MQTT" && name != b"MQIsdp" {
        return Err(Malformed("not an MQTT protocol name"));
    }
    let level = b.u8()?;
    let mut c = Connect {
        level,
        client_id: String::new(),
        username: None,
        password: None,
        will_topic: None,
        keep_alive: 0,
        clean_session: true,
        keep_alive_at: 0,
    };
    if !(3..=4).contains(&level) {
        return Ok(c);
    }
    let flags = b.u8()?;
    if flags & 0x01 != 0 {
        return Err(Malformed("reserved connect flag set"));
    }
    c.clean_session = flags & 0x02 != 0;
    c.keep_alive_at = body.len() - b.0.len();
    c.keep_alive = b.u16()?;
    c.client_id = b.str()?.to_owned();
    if flags & 0x04 != 0 {
        c.will_topic = Some(b.str()?.to_owned());
        let _message = b.bytes()?;
    }
    if flags & 0x80 != 0 {
        c.username = Some(b.str()?.to_owned());
    }
    if flags & 0x40 != 0 {
        c.password = Some(b.bytes()?.to_vec());
    }
    Ok(c)
}

/// A PUBLISH packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    pub qos: u8,
    pub retain: bool,
    pub topic: &'a [u8],
    /// The packet id (QoS 1 and 2).
    pub pkid: Option<u16>,
    pub payload: &'a [u8],
}

/// Parses a PUBLISH: `byte` is its first byte, `body` what follows the
/// fixed header. A topic with a wildcard is malformed (MQTT 3.1.1, 3.3.2.1).
pub fn publish(byte: u8, body: &[u8]) -> Result<Publish<'_>, Malformed> {
    let qos = (byte >> 1) & 0x03;
    if qos == 3 {
        return Err(Malformed("PUBLISH with QoS 3"));
    }
    let mut b = Body(body);
    let topic = b.bytes()?;
    if topic.iter().any(|&c| c == b'+' || c == b'#') {
        return Err(Malformed("a PUBLISH topic with a wildcard"));
    }
    let pkid = if qos > 0 { Some(b.u16()?) } else { None };
    Ok(Publish {
        qos,
        retain: byte & 0x01 != 0,
        topic,
        pkid,
        payload: b.0,
    })
}

/// The first byte of a PUBLISH at QoS 1, its other flags kept: the front
/// hands a device's QoS 2 publish to the broker at QoS 1 (the exchange
/// with the device is the front's).
pub fn at_qos1(byte: u8) -> u8 {
    (byte & !0x06) | 0x02
}

/// Parses the packet id of a PUBACK, PUBREC, PUBREL or PUBCOMP.
pub fn packet_id(body: &[u8]) -> Result<u16, Malformed> {
    let mut b = Body(body);
    let id = b.u16()?;
    if !b.0.is_empty() {
        return Err(Malformed("bytes after the packet id"));
    }
    Ok(id)
}

/// Parses a SUBSCRIBE body: its packet id and its filters.
pub fn subscribe(body: &[u8]) -> Result<(u16, Vec<&str>), Malformed> {
    let mut b = Body(body);
    let pkid = b.u16()?;
    let mut filters = Vec::new();
    while !b.0.is_empty() {
        filters.push(b.str()?);
        if b.u8()? > 2 {
            return Err(Malformed("SUBSCRIBE with QoS 3"));
        }
    }
    if filters.is_empty() {
        return Err(Malformed("SUBSCRIBE without a filter"));
    }
    Ok((pkid, filters))
}

/// Parses an UNSUBSCRIBE body: its filters.
pub fn unsubscribe(body: &[u8]) -> Result<Vec<&str>, Malformed> {
    let mut b = Body(body);
    b.u16()?;
    let mut filters = Vec::new();
    while !b.0.is_empty() {
        filters.push(b.str()?);
    }
    if filters.is_empty() {
        return Err(Malformed("UNSUBSCRIBE without a filter"));
    }
    Ok(filters)
}

/// A CONNACK with `code` and no session.
pub fn connack(code: ConnackCode) -> [u8; 4] {
    [0x20, 0x02, 0x00, code as u8]
}

/// A PUBACK for `pkid`.
pub fn puback(pkid: u16) -> [u8; 4] {
    let [hi, lo] = pkid.to_be_bytes();
    [0x40, 0x02, hi, lo]
}

/// A PUBREC for `pkid`.
pub fn pubrec(pkid: u16) -> [u8; 4] {
    let [hi, lo] = pkid.to_be_bytes();
    [0x50, 0x02, hi, lo]
}

/// A PUBCOMP for `pkid`.
pub fn pubcomp(pkid: u16) -> [u8; 4] {
    let [hi, lo] = pkid.to_be_bytes();
    [0x70, 0x02, hi, lo]
}

/// A SUBACK that refuses `count` filters (return code 0x80).
pub fn suback_refused(pkid: u16, count: usize, out: &mut BytesMut) {
    out.extend_from_slice(&[0x90]);
    put_remaining_length(out, 2 + count);
    out.extend_from_slice(&pkid.to_be_bytes());
    out.extend(std::iter::repeat_n(0x80, count));
}

/// An MQTT 3.1.1 CONNECT for a clean session as `client` (at most 65,535
/// bytes: it came in a CONNECT), no will, no login.
pub fn clean_connect(client: &str, keep_alive: u16) -> Vec<u8> {
    let id = &client.as_bytes()[..client.len().min(usize::from(u16::MAX))];
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.extend_from_slice(&[0x10]);
    put_remaining_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out.to_vec()
}

fn put_remaining_length(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.extend_from_slice(&[b]);
        if n == 0 {
            return;
        }
    }
}

/// Splits whole packets off the front of `buf`; `None` until one is
/// complete.
pub fn split_packet(buf: &mut BytesMut) -> Result<Option<(Header, BytesMut)>, Malformed> {
    match header(buf)? {
        Some(h) if buf.len() >= h.total() => {
            let packet = buf.split_to(h.total());
            Ok(Some((h, packet)))
        }
        _ => Ok(None),
    }
}

/// Drops the fixed header of a packet split by [`split_packet`].
pub fn body<'p>(h: &Header, packet: &'p BytesMut) -> &'p [u8] {
    &packet[h.header_len..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(byte: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![byte];
        let mut n = body.len();
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(body);
        out
    }

    fn s(v: &str) -> Vec<u8> {
        let mut out = (v.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(v.as_bytes());
        out
    }

    #[test]
    fn headers_of_every_length() {
        assert_eq!(header(&[]).unwrap(), None);
        assert_eq!(header(&[0x30]).unwrap(), None);
        let h = header(&[0x30, 0x00]).unwrap().unwrap();
        assert_eq!((h.kind(), h.header_len, h.remaining), (3, 2, 0));
        let h = header(&[0x30, 0xc1, 0x02]).unwrap().unwrap();
        assert_eq!((h.header_len, h.remaining), (3, 321));
        let h = header(&[0x30, 0xff, 0xff, 0xff, 0x7f]).unwrap().unwrap();
        assert_eq!(h.remaining, 268_435_455, "MQTT's largest");
        assert_eq!(header(&[0x30, 0xff, 0xff, 0xff]).unwrap(), None);
        assert!(header(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn a_clean_connect_reads_back() {
        let mut wire = BytesMut::from(&clean_connect("dev-7", 65535)[..]);
        let (h, pkt) = split_packet(&mut wire).unwrap().unwrap();
        assert!(wire.is_empty());
        assert_eq!(h.kind(), CONNECT);
        let c = connect(body(&h, &pkt)).unwrap();
        assert_eq!(
            c,
            Connect {
                level: 4,
                client_id: "dev-7".into(),
                username: None,
                password: None,
                will_topic: None,
                keep_alive: 65535,
                clean_session: true,
                keep_alive_at: 8,
            }
        );
        let long = "d".repeat(300);
        let mut wire = BytesMut::from(&clean_connect(&long, 1)[..]);
        let (h, pkt) = split_packet(&mut wire).unwrap().unwrap();
        assert_eq!(connect(body(&h, &pkt)).unwrap().client_id, long);
    }

    #[test]
    fn connect_with_will_user_and_password() {
        let mut body = s("MQTT");
        body.extend_from_slice(&[4, 0x80 | 0x40 | 0x04 | 0x02, 0, 30]);
        body.extend(s("dev-1"));
        body.extend(s("sensors/dev-1/status"));
        body.extend(s("gone"));
        body.extend(s("dev-1"));
        body.extend(s("pw"));
        let c = connect(&body).unwrap();
        assert_eq!(
            c,
            Connect {
                level: 4,
                client_id: "dev-1".into(),
                username: Some("dev-1".into()),
                password: Some(b"pw".to_vec()),
                will_topic: Some("sensors/dev-1/status".into()),
                keep_alive: 30,
                clean_session: true,
                keep_alive_at: 8,
            }
        );
        assert_eq!(&body[8..10], &[0, 30]);
        let mut anon = s("MQTT");
        anon.extend_from_slice(&[4, 0x02, 0, 30]);
        anon.extend(s(""));
        let c = connect(&anon).unwrap();
        assert_eq!((c.client_id.as_str(), c.username), ("", None));
        assert!(connect(&anon[..anon.len() - 1]).is_err());
        let mut v5 = s("MQTT");
        v5.push(5);
        assert_eq!(connect(&v5).unwrap().level, 5);
        assert!(connect(&s("HTTP")).is_err());
    }

    #[test]
    fn publish_heads() {
        let mut body = s("a/b");
        body.extend_from_slice(&[0x01, 0x02]);
        body.extend_from_slice(b"{}");
        let p = publish(0x33, &body).unwrap();
        assert_eq!(
            p,
            Publish {
                qos: 1,
                retain: true,
                topic: b"a/b",
                pkid: Some(0x0102),
                payload: b"{}",
            }
        );
        let t = s("t");
        let p = publish(0x30, &t).unwrap();
        assert_eq!(
            (p.qos, p.retain, p.pkid, p.payload),
            (0, false, None, &b""[..])
        );
        assert!(publish(0x36, &body).is_err());
        assert!(publish(0x32, &s("t")).is_err(), "QoS 1 needs a packet id");
        for wild in ["a/+", "#", "a/#/b"] {
            assert_eq!(
                publish(0x30, &s(wild)),
                Err(Malformed("a PUBLISH topic with a wildcard"))
            );
        }
        assert_eq!(at_qos1(0x35), 0x33, "QoS 2, retained: QoS 1, retained");
        assert_eq!(at_qos1(0x3a), 0x3a, "a DUP QoS 1 stays");
        assert_eq!(packet_id(&[1, 2]), Ok(0x0102));
        assert!(packet_id(&[1]).is_err() && packet_id(&[1, 2, 3]).is_err());
        assert_eq!(pubrec(7), [0x50, 2, 0, 7]);
        assert_eq!(pubcomp(7), [0x70, 2, 0, 7]);
    }

    #[test]
    fn subscribe_and_suback() {
        let mut body = vec![0x00, 0x07];
        body.extend(s("#"));
        body.push(1);
        body.extend(s("a/+"));
        body.push(0);
        assert_eq!(subscribe(&body).unwrap(), (7, vec!["#", "a/+"]));
        assert!(subscribe(&[0, 7]).is_err());
        let mut bad = vec![0x00, 0x07];
        bad.extend(s("#"));
        bad.push(3);
        assert!(subscribe(&bad).is_err());
        let mut body = vec![0x00, 0x08];
        body.extend(s("a/+"));
        body.extend(s("b"));
        assert_eq!(unsubscribe(&body).unwrap(), vec!["a/+", "b"]);
        assert!(unsubscribe(&[0, 8]).is_err());
        let mut out = BytesMut::new();
        suback_refused(7, 2, &mut out);
        assert_eq!(&out[..], &[0x90, 4, 0, 7, 0x80, 0x80]);
        let mut out = BytesMut::new();
        suback_refused(1, 200, &mut out);
        assert_eq!(&out[..4], &[0x90, 0xca, 0x01, 0]);
        assert_eq!(out.len(), 3 + 202);
    }

    #[test]
    fn splitting_whole_packets() {
        let mut buf = BytesMut::new();
        buf.extend(encode(0x30, &s("a")));
        buf.extend(encode(0xc0, &[]));
        let partial = encode(0x30, &s("long/topic"));
        buf.extend_from_slice(&partial[..5]);
        let (h, p) = split_packet(&mut buf).unwrap().unwrap();
        assert_eq!((h.kind(), body(&h, &p)), (3, &s("a")[..]));
        let (h, _) = split_packet(&mut buf).unwrap().unwrap();
        assert_eq!(h.kind(), 12);
        assert_eq!(split_packet(&mut buf).unwrap(), None);
        buf.extend_from_slice(&partial[5..]);
        assert!(split_packet(&mut buf).unwrap().is_some());
        assert!(buf.is_empty());
        assert_eq!(connack(ConnackCode::BadUsernameOrPassword), [0x20, 2, 0, 4]);
        assert_eq!(puback(0x1234), [0x40, 2, 0x12, 0x34]);
    }
}
