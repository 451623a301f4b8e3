//! The decompression libraries behind one streaming decoder: gzip (zlib's
//! inflate, with its window size), brotli or zstd, each fed one data frame
//! at a time and writing through an output chunk of `chunk_size` bytes.
//!
//! As Envoy's: the output of one frame may be at most `max_inflate_ratio`
//! times its input (a decompression bomb stops there, counted as the
//! library's error), and a stream that failed gives nothing more. So the
//! memory one frame takes is bounded by its size times the ratio, plus a chunk.

use crate::stats::Counter;
use brotli::HeapAlloc;
use brotli_decompressor::{BrotliDecoderParameter, BrotliResult, BrotliState, HuffmanCode};
use std::sync::Arc;

/// The library and its settings, from the config.
#[derive(Clone, Copy, Debug)]
pub enum Library {
    Gzip { window_bits: u8 },
    Brotli { disable_ring_buffer_reallocation: bool },
    Zstd,
}

/// The library's error counters (`<prefix>decompressor_library.*`), as
/// Envoy names them.
pub struct LibraryErrors {
    /// zlib's data error, brotli's error, zstd's generic error: also what a
    /// frame past the inflate ratio counts.
    pub error: Arc<Counter>,
    /// zstd's `zstd_checksum_wrong_error` (None for the others).
    pub checksum: Option<Arc<Counter>>,
}

type Brotli = BrotliState<HeapAlloc<u8>, HeapAlloc<u32>, HeapAlloc<HuffmanCode>>;

enum Codec {
    Gzip(Box<flate2::Decompress>),
    Brotli(Box<Brotli>),
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
}

/// What one step of a library did.
struct Step {
    consumed: usize,
    produced: usize,
    /// The compressed stream is complete; what follows is ignored.
    end: bool,
}

enum Failure {
    Data,
    Checksum,
}

impl Codec {
    fn new(library: Library) -> Option<Self> {
        Some(match library {
            Library::Gzip { window_bits } => Self::Gzip(Box::new(flate2::Decompress::new_gzip(window_bits))),
            Library::Brotli { disable_ring_buffer_reallocation } => {
                let mut s = Brotli::new_strict(HeapAlloc::default(), HeapAlloc::default(), HeapAlloc::default());
                s.set_parameter(
                    BrotliDecoderParameter::BROTLI_DECODER_PARAM_DISABLE_RING_BUFFER_REALLOCATION,
                    u32::from(disable_ring_buffer_reallocation),
                );
                Self::Brotli(Box::new(s))
            }
            Library::Zstd => Self::Zstd(Box::new(zstd::stream::raw::Decoder::new().ok()?)),
        })
    }

    fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<Step, Failure> {
        match self {
            Self::Gzip(d) => {
                let (in0, out0) = (d.total_in(), d.total_out());
                let status = d.decompress(input, out, flate2::FlushDecompress::None).map_err(|_| Failure::Data)?;
                Ok(Step {
                    consumed: (d.total_in() - in0) as usize,
                    produced: (d.total_out() - out0) as usize,
                    end: status == flate2::Status::StreamEnd,
                })
            }
            Self::Brotli(s) => {
                let (mut avail_in, mut in_off) = (input.len(), 0usize);
                let (mut avail_out, mut out_off, mut total) = (out.len(), 0usize, 0usize);
                let r = brotli_decompressor::BrotliDecompressStream(
                    &mut avail_in,
                    &mut in_off,
                    input,
                    &mut avail_out,
                    &mut out_off,
                    out,
                    &mut total,
                    s,
                );
                match r {
                    BrotliResult::ResultFailure => Err(Failure::Data),
                    r => {
                        Ok(Step { consumed: in_off, produced: out_off, end: matches!(r, BrotliResult::ResultSuccess) })
                    }
                }
            }
            Self::Zstd(d) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut inb = InBuffer::around(input);
                let mut outb = OutBuffer::around(out);
                d.run(&mut inb, &mut outb).map_err(|e| {
                    if e.to_string().contains("checksum") {
                        Failure::Checksum
                    } else {
                        Failure::Data
                    }
                })?;
                // zstd's frames may follow each other: the stream never ends here.
                Ok(Step { consumed: inb.pos(), produced: outb.pos(), end: false })
            }
        }
    }
}

/// One direction's decoder for one stream.
pub struct Inflater {
    library: Library,
    codec: Option<Codec>,
    chunk: Vec<u8>,
    max_ratio: u64,
    errors: Arc<LibraryErrors>,
    ended: bool,
}

impl Inflater {
    /// `None` when the library could not make a decoder (zstd out of memory).
    pub fn new(library: Library, chunk_size: usize, max_ratio: u64, errors: Arc<LibraryErrors>) -> Self {
        Self { library, codec: Codec::new(library), chunk: vec![0; chunk_size.max(1)], max_ratio, errors, ended: false }
    }

    fn fail(&mut self, f: Failure) {
        match (f, &self.errors.checksum) {
            (Failure::Checksum, Some(c)) => c.inc(),
            _ => self.errors.error.inc(),
        }
        self.codec = None;
    }

    /// The stream's end, as Envoy's last call with no more input: a brotli
    /// decoder that failed counts its error once more then.
    pub fn end(&mut self) {
        if self.codec.is_none() && !self.ended && matches!(self.library, Library::Brotli { .. }) {
            self.errors.error.inc();
        }
    }

    /// Decompresses one frame's worth of compressed bytes; what it gives is
    /// at most `max_inflate_ratio` times `input` (and one chunk more).
    pub fn decompress(&mut self, input: &[u8]) -> Vec<u8> {
        let limit = self.max_ratio.saturating_mul(input.len() as u64);
        let mut out = Vec::new();
        let mut pos = 0;
        while !self.ended {
            let Some(codec) = self.codec.as_mut() else {
                // A failed stream: Envoy's library counts each frame it cannot read.
                if !input.is_empty() {
                    self.errors.error.inc();
                }
                break;
            };
            let step = match codec.step(&input[pos..], &mut self.chunk) {
                Ok(s) => s,
                Err(f) => {
                    self.fail(f);
                    break;
                }
            };
            out.extend_from_slice(&self.chunk[..step.produced]);
            pos += step.consumed;
            if out.len() as u64 > limit {
                self.fail(Failure::Data);
                break;
            }
            if step.end {
                self.ended = true;
                self.codec = None;
                break;
            }
            // Until the input is taken and a step gives nothing more (zstd
            // may flush less than a chunk while it holds more).
            if step.produced == 0 && (step.consumed == 0 || pos == input.len()) {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn errors() -> Arc<LibraryErrors> {
        Arc::new(LibraryErrors { error: crate::stats::Store::default().counter("e"), checksum: None })
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    fn text() -> Vec<u8> {
        (0..3000u32).flat_map(|i| format!("line {i} of a body\n").into_bytes()).collect()
    }

    /// Frame by frame, every library gives back what went in.
    #[test]
    fn each_library_streams_back_the_input() {
        let input = text();
        let br = {
            let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
            w.write_all(&input).expect("brotli");
            w.into_inner()
        };
        let zs = zstd::stream::encode_all(input.as_slice(), 3).expect("zstd");
        for (lib, packed) in [
            (Library::Gzip { window_bits: 15 }, gzip(&input)),
            (Library::Brotli { disable_ring_buffer_reallocation: false }, br),
            (Library::Zstd, zs),
        ] {
            // A ratio well above the text's: zstd gives a block only when
            // its last byte arrives, and a short last frame may release a lot.
            let mut inf = Inflater::new(lib, 4096, 10_000, errors());
            let out: Vec<u8> = packed.chunks(700).flat_map(|c| inf.decompress(c)).collect();
            assert!(out == input, "{lib:?}: {} bytes back of {}", out.len(), input.len());
        }
    }

    /// A bomb stops at the ratio and counts an error; nothing follows.
    #[test]
    fn a_bomb_stops_at_the_ratio() {
        let packed = gzip(&vec![0u8; 8 << 20]);
        let errs = errors();
        let mut inf = Inflater::new(Library::Gzip { window_bits: 15 }, 4096, 100, errs.clone());
        let first = inf.decompress(&packed[..1000]);
        assert!(first.len() <= 100 * 1000 + 4096, "{}", first.len());
        assert!(first.len() > 100 * 1000);
        assert_eq!(errs.error.value(), 1);
        assert!(inf.decompress(&packed[1000..]).is_empty());
    }
}
