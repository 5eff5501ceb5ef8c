//! A tiny length-checked binary codec shared by the WAL, checkpoints and the entity store.
//!
//! Little-endian fixed-width integers, length-prefixed byte strings. Every read is
//! bounds-checked and returns [`CoreError::Decode`] instead of panicking, because the
//! bytes come from disk.

use crate::CoreError;

/// Appends encoded values to a `Vec<u8>`.
#[derive(Debug, Default)]
pub struct Encoder {
    pub buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder { buf: Vec::new() }
    }
    pub fn with_capacity(n: usize) -> Encoder {
        Encoder {
            buf: Vec::with_capacity(n),
        }
    }
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }
    #[inline]
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    #[inline]
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    #[inline]
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    #[inline]
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    #[inline]
    pub fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    #[inline]
    pub fn f32(&mut self, v: f32) {
        self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    /// A length-prefixed (u32) byte string.
    pub fn bytes(&mut self, v: &[u8]) {
        debug_assert!(v.len() <= u32::MAX as usize);
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
}

/// Reads values written by [`Encoder`] from a byte slice.
#[derive(Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Decoder<'a> {
        Decoder { buf, pos: 0 }
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    /// The next `n` raw bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CoreError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(CoreError::Decode("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(CoreError::Decode("unexpected end of data"))?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CoreError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, CoreError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, CoreError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, CoreError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, CoreError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn f64(&mut self) -> Result<f64, CoreError> {
        Ok(f64::from_bits(u64::from_le_bytes(self.array()?)))
    }
    pub fn f32(&mut self) -> Result<f32, CoreError> {
        Ok(f32::from_bits(u32::from_le_bytes(self.array()?)))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], CoreError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn str(&mut self) -> Result<&'a str, CoreError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| CoreError::Decode("invalid utf-8"))
    }
    /// Errors unless every byte was consumed — trailing garbage means a format mismatch.
    pub fn finish(&self) -> Result<(), CoreError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(CoreError::Decode("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut e = Encoder::new();
        e.u8(7);
        e.u32(1 << 20);
        e.i64(-5);
        e.f64(1.5);
        e.str("héllo");
        let buf = e.into_inner();
        let mut d = Decoder::new(&buf);
        assert_eq!(d.u8().unwrap(), 7);
        assert_eq!(d.u32().unwrap(), 1 << 20);
        assert_eq!(d.i64().unwrap(), -5);
        assert_eq!(d.f64().unwrap(), 1.5);
        assert_eq!(d.str().unwrap(), "héllo");
        d.finish().unwrap();
        for cut in 0..buf.len() {
            let mut d = Decoder::new(&buf[..cut]);
            let r = (|| -> Result<(), CoreError> {
                d.u8()?;
                d.u32()?;
                d.i64()?;
                d.f64()?;
                d.str()?;
                Ok(())
            })();
            assert!(r.is_err());
        }
    }
}
