//! The gzip library as Envoy's (`envoy.compression.gzip.compressor`) runs
//! zlib: `deflateInit2` with the configured level, strategy, `window_bits`
//! (with 16 added for the gzip header and trailer) and `memory_level`, each
//! chunk of a body compressed and then sync-flushed (so a streamed response
//! goes out as it comes), the last one finished. `chunk_size` is the size of
//! the output buffer zlib writes into.

use legate_api::pb::envoy::extensions::compression::gzip::compressor::v3::Gzip as PbGzip;
use zlib_rs::{DeflateConfig, DeflateFlush, Method, Status, Strategy};

/// Envoy's defaults: `DefaultMemoryLevel` and `DefaultWindowBits`.
const DEFAULT_MEMORY_LEVEL: u32 = 5;
const DEFAULT_WINDOW_BITS: u32 = 12;
const DEFAULT_CHUNK_SIZE: u32 = 4096;
/// Added to the window bits: a gzip header and trailer around the data.
const GZIP_HEADER: i32 = 16;

/// The settings of one gzip library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GzipSettings {
    /// zlib's level, 1-9 (Envoy's `DEFAULT_COMPRESSION` is zlib's 6).
    level: i32,
    strategy: Strategy,
    window_bits: i32,
    memory_level: i32,
    chunk_size: usize,
}

impl GzipSettings {
    /// Reads the library's config; the ranges are the API's own (9-15 window
    /// bits, 1-9 memory level, 4096-65536 chunk size), checked again so
    /// zlib never sees a value it refuses.
    pub fn compile(gz: &PbGzip) -> Result<Self, String> {
        let level = match gz.compression_level {
            0 => 6,
            n @ 1..=9 => n,
            n => return Err(format!("compression_level: unknown level {n}")),
        };
        let strategy = match gz.compression_strategy {
            0 => Strategy::Default,
            1 => Strategy::Filtered,
            2 => Strategy::HuffmanOnly,
            3 => Strategy::Rle,
            4 => Strategy::Fixed,
            n => return Err(format!("compression_strategy: unknown strategy {n}")),
        };
        let window_bits = gz.window_bits.as_ref().map_or(DEFAULT_WINDOW_BITS, |w| w.value);
        if !(9..=15).contains(&window_bits) {
            return Err(format!("window_bits: {window_bits} is not within 9-15"));
        }
        let memory_level = gz.memory_level.as_ref().map_or(DEFAULT_MEMORY_LEVEL, |m| m.value);
        if !(1..=9).contains(&memory_level) {
            return Err(format!("memory_level: {memory_level} is not within 1-9"));
        }
        let chunk_size = gz.chunk_size.as_ref().map_or(DEFAULT_CHUNK_SIZE, |c| c.value);
        if !(4096..=65536).contains(&chunk_size) {
            return Err(format!("chunk_size: {chunk_size} is not within 4096-65536"));
        }
        Ok(Self {
            level,
            strategy,
            window_bits: window_bits as i32,
            memory_level: memory_level as i32,
            chunk_size: chunk_size as usize,
        })
    }
}

/// One response's gzip stream.
pub struct GzipStream {
    z: zlib_rs::Deflate,
    /// zlib's output buffer, `chunk_size` bytes.
    buf: Vec<u8>,
    /// What the body has not taken yet.
    out: Vec<u8>,
    done: bool,
}

impl GzipStream {
    pub fn new(s: GzipSettings) -> Self {
        let config = DeflateConfig {
            level: s.level,
            method: Method::Deflated,
            window_bits: s.window_bits + GZIP_HEADER,
            mem_level: s.memory_level,
            strategy: s.strategy,
        };
        Self { z: zlib_rs::Deflate::new_with_config(config), buf: vec![0; s.chunk_size], out: Vec::new(), done: false }
    }

    /// Compresses `data` and flushes what it makes (`Z_SYNC_FLUSH`), as
    /// Envoy's compressor does for every chunk before the last.
    pub fn write(&mut self, data: &[u8]) {
        self.run(data, DeflateFlush::NoFlush);
        self.run(&[], DeflateFlush::SyncFlush);
    }

    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Ends the stream (`Z_FINISH`): the rest and the gzip trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.run(&[], DeflateFlush::Finish);
        self.out
    }

    /// zlib's loop: call deflate until the input is taken and an output
    /// buffer is left unfilled (or the stream ended).
    fn run(&mut self, mut input: &[u8], flush: DeflateFlush) {
        while !self.done {
            let (in_before, out_before) = (self.z.total_in(), self.z.total_out());
            let result = self.z.compress(input, &mut self.buf, flush);
            let taken = (self.z.total_in() - in_before) as usize;
            let made = (self.z.total_out() - out_before) as usize;
            self.out.extend_from_slice(&self.buf[..made]);
            input = &input[taken..];
            match result {
                Ok(Status::StreamEnd) | Err(_) => self.done = true,
                Ok(_) if input.is_empty() && made < self.buf.len() => return,
                Ok(Status::BufError) if taken == 0 && made == 0 => return,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(window_bits: u32, memory_level: u32) -> GzipSettings {
        let gz = PbGzip {
            window_bits: Some(prost_types_u32(window_bits)),
            memory_level: Some(prost_types_u32(memory_level)),
            ..Default::default()
        };
        GzipSettings::compile(&gz).expect("settings")
    }

    fn prost_types_u32(value: u32) -> legate_api::pb::google::protobuf::UInt32Value {
        legate_api::pb::google::protobuf::UInt32Value { value }
    }

    /// Inflates a gzip stream (header, raw deflate data, trailer).
    fn inflate(gz: &[u8]) -> Vec<u8> {
        assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0]);
        let mut z = zlib_rs::Inflate::new(false, 15);
        let mut out = vec![0; 1 << 20];
        let r = z.decompress(&gz[10..], &mut out, zlib_rs::InflateFlush::Finish);
        assert_eq!(r, Ok(Status::StreamEnd));
        out.truncate(z.total_out() as usize);
        out
    }

    #[test]
    fn the_window_bounds_back_references() {
        // A 2000-byte block seen three times: a 512-byte window (9 bits)
        // cannot reach the copy before, a 32 KiB one can. (zlib-rs's
        // inflate does not refuse a reference beyond a small window, so
        // the end-to-end test checks that with zlib itself.)
        let block: Vec<u8> = (0..2000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let input: Vec<u8> = block.iter().chain(block.iter()).chain(block.iter()).copied().collect();
        let sizes: Vec<usize> = [9, 15]
            .into_iter()
            .map(|wb| {
                // Written in chunks, each flushed, drained as it comes.
                let mut s = GzipStream::new(settings(wb, 9));
                let mut out = Vec::new();
                for chunk in input.chunks(700) {
                    s.write(chunk);
                    out.append(s.output());
                }
                out.extend(s.finish());
                assert_eq!(inflate(&out), input);
                out.len()
            })
            .collect();
        assert!(sizes[0] > 3 * sizes[1], "9 and 15 window bits: {sizes:?}");
    }

    #[test]
    fn defaults_are_envoys() {
        let s = GzipSettings::compile(&PbGzip::default()).expect("defaults");
        assert_eq!((s.level, s.window_bits, s.memory_level, s.chunk_size), (6, 12, 5, 4096));
    }
}
