//! The compression libraries behind one streaming encoder: gzip, brotli or
//! zstd, each writing into a buffer the compressed body drains.

/// A streaming encoder writing into a buffer the body drains.
pub enum Encoder {
    Gzip(Box<flate2::write::GzEncoder<Vec<u8>>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(Box<zstd::stream::write::Encoder<'static, Vec<u8>>>),
}

impl Encoder {
    pub fn gzip(level: u32) -> Self {
        Self::Gzip(Box::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level))))
    }

    /// `quality` 0-11, `window_bits` 10-24 (Envoy's defaults: 3 and 18).
    pub fn brotli(quality: u32, window_bits: u32) -> Self {
        Self::Brotli(Box::new(brotli::CompressorWriter::new(Vec::new(), 4096, quality, window_bits)))
    }

    /// `level` 1-22 (Envoy's default 3), a content checksum, and a
    /// strategy (0 leaves zstd's choice). `None` if zstd refuses the settings.
    pub fn zstd(level: i32, checksum: bool, strategy: u32) -> Option<Self> {
        use zstd::stream::raw::CParameter;
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), level).ok()?;
        e.include_checksum(checksum).ok()?;
        if strategy != 0 {
            let s = match strategy {
                1 => zstd::zstd_safe::Strategy::ZSTD_fast,
                2 => zstd::zstd_safe::Strategy::ZSTD_dfast,
                3 => zstd::zstd_safe::Strategy::ZSTD_greedy,
                4 => zstd::zstd_safe::Strategy::ZSTD_lazy,
                5 => zstd::zstd_safe::Strategy::ZSTD_lazy2,
                6 => zstd::zstd_safe::Strategy::ZSTD_btlazy2,
                7 => zstd::zstd_safe::Strategy::ZSTD_btopt,
                8 => zstd::zstd_safe::Strategy::ZSTD_btultra,
                _ => zstd::zstd_safe::Strategy::ZSTD_btultra2,
            };
            e.set_parameter(CParameter::Strategy(s)).ok()?;
        }
        Some(Self::Zstd(Box::new(e)))
    }

    pub(super) fn write(&mut self, data: &[u8]) {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = match self {
            Self::Gzip(e) => e.write_all(data),
            Self::Brotli(e) => e.write_all(data),
            Self::Zstd(e) => e.write_all(data),
        };
    }

    pub(super) fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Self::Gzip(e) => e.get_mut(),
            Self::Brotli(e) => e.get_mut(),
            Self::Zstd(e) => e.get_mut(),
        }
    }

    pub(super) fn finish(self) -> Vec<u8> {
        match self {
            Self::Gzip(e) => e.finish().unwrap_or_default(),
            Self::Brotli(e) => e.into_inner(),
            Self::Zstd(e) => e.finish().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// Many small writes, drained as they come, then the end: what came out
    /// decompresses to what went in.
    fn round_trip(mut enc: Encoder, decode: impl Fn(&[u8]) -> Vec<u8>) {
        let input: Vec<u8> = (0..5000u32).flat_map(|i| format!("line {i} of a streamed body\n").into_bytes()).collect();
        let mut out = Vec::new();
        for chunk in input.chunks(1000) {
            enc.write(chunk);
            out.append(enc.output());
        }
        out.extend(enc.finish());
        assert!(out.len() < input.len() / 4, "compressed {} -> {}", input.len(), out.len());
        assert_eq!(decode(&out), input);
    }

    #[test]
    fn gzip_streams() {
        round_trip(Encoder::gzip(6), |b| {
            let mut v = Vec::new();
            flate2::read::GzDecoder::new(b).read_to_end(&mut v).expect("gzip");
            v
        });
    }

    #[test]
    fn brotli_streams() {
        round_trip(Encoder::brotli(3, 18), |b| {
            let mut v = Vec::new();
            brotli::Decompressor::new(b, 4096).read_to_end(&mut v).expect("brotli");
            v
        });
    }
}
