//! Hostile image files: a bounded, deterministic mutation fuzz of the PNG/JPEG decoder and
//! headers declaring huge sizes. Every input must give `Err` or a consistent image
//! (`data.len() == w·h·3`), never a panic, and never allocate past a cap (a counting global
//! allocator watches the peak of live bytes).

#[path = "../src/data/testutil.rs"]
#[allow(dead_code)]
mod testutil;

use std::alloc::{GlobalAlloc, Layout, System};

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};

use nag_train::data::folder::{
    decode_image, decode_image_bytes, decode_image_bytes_limited, MAX_IMAGE_PIXELS,
};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grow(new_size);
        }
        p
    }
}

fn grow(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests measuring the allocation peak run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f`, returning its result and the peak of live bytes above the starting level.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

// ---------------------------------------------------------------------------------------------
// Seed inputs.

fn png_bytes(
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    palette: Option<&[u8]>,
    trns: Option<&[u8]>,
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if let Some(p) = palette {
            enc.set_palette(p.to_vec());
        }
        if let Some(t) = trns {
            enc.set_trns(t.to_vec());
        }
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
    }
    out
}

fn ramp(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 37 % 251) as u8).collect()
}

/// Offset of the SOF0 height field in [`testutil::tiny_jpeg`]'s output (width follows it).
const JPEG_SOF_HEIGHT: usize = 2 + 69 + 5;

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use png::{BitDepth as D, ColorType as C};
    let palette: Vec<u8> = (0..16u8)
        .flat_map(|i| [i * 16, 255 - i * 16, i * 7])
        .collect();
    vec![
        (
            "png-rgb8",
            png_bytes(5, 4, C::Rgb, D::Eight, None, None, &ramp(5 * 4 * 3)),
        ),
        (
            "png-gray8",
            png_bytes(7, 3, C::Grayscale, D::Eight, None, None, &ramp(21)),
        ),
        (
            "png-gray-alpha8",
            png_bytes(3, 3, C::GrayscaleAlpha, D::Eight, None, None, &ramp(18)),
        ),
        (
            "png-rgba8",
            png_bytes(4, 2, C::Rgba, D::Eight, None, None, &ramp(32)),
        ),
        (
            "png-rgb16",
            png_bytes(3, 2, C::Rgb, D::Sixteen, None, None, &ramp(36)),
        ),
        (
            "png-gray1",
            png_bytes(9, 2, C::Grayscale, D::One, None, None, &ramp(4)),
        ),
        (
            "png-palette4",
            png_bytes(
                4,
                4,
                C::Indexed,
                D::Four,
                Some(&palette),
                Some(&[0, 128]),
                &ramp(8),
            ),
        ),
        (
            "png-palette8",
            png_bytes(
                3,
                3,
                C::Indexed,
                D::Eight,
                Some(&palette),
                None,
                &[0, 1, 2, 3, 4, 5, 6, 7, 15],
            ),
        ),
        ("jpeg-gray", testutil::tiny_jpeg(&[144])),
        ("jpeg-ycbcr", testutil::tiny_jpeg(&[144, 128, 144])),
    ]
}

// ---------------------------------------------------------------------------------------------
// Mutation.

/// The mutations' randomness: rand's seeded `StdRng` behind the two draws the fuzzer uses.
struct Rng(StdRng);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.random()
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n.max(1))
    }
}

const INTERESTING_U32: [u32; 8] = [
    0,
    1,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x0001_0000,
    100_000,
    0x0000_FFFF,
];

/// Applies 1–4 random edits; returns their description.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) -> Vec<String> {
    let mut log = Vec::new();
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            bytes.push(0);
        }
        let at = rng.below(bytes.len());
        match rng.below(8) {
            0 => {
                let bit = rng.below(8);
                bytes[at] ^= 1 << bit;
                log.push(format!("flip bit {bit} of byte {at}"));
            }
            1 => {
                let v = rng.next() as u8;
                bytes[at] = v;
                log.push(format!("set byte {at} = {v:#04x}"));
            }
            2 => {
                let v = [0x00, 0x01, 0x7F, 0x80, 0xFF][rng.below(5)];
                bytes[at] = v;
                log.push(format!("set byte {at} = {v:#04x}"));
            }
            3 => {
                let v = INTERESTING_U32[rng.below(INTERESTING_U32.len())].to_be_bytes();
                let end = (at + 4).min(bytes.len());
                bytes[at..end].copy_from_slice(&v[..end - at]);
                log.push(format!("set u32 at {at} = {:#x}", u32::from_be_bytes(v)));
            }
            4 => {
                let v = rng.next() as u8;
                bytes.insert(at, v);
                log.push(format!("insert {v:#04x} at {at}"));
            }
            5 => {
                let n = 1 + rng.below(8).min(bytes.len() - at - 1);
                bytes.drain(at..at + n);
                log.push(format!("delete {n} at {at}"));
            }
            6 => {
                bytes.truncate(at);
                log.push(format!("truncate to {at}"));
            }
            _ => {
                let n = 1 + rng.below(16).min(bytes.len() - at - 1);
                let chunk = bytes[at..at + n].to_vec();
                let to = rng.below(bytes.len());
                bytes.splice(to..to, chunk);
                log.push(format!("copy {n} from {at} to {to}"));
            }
        }
    }
    log
}

/// Rewrites every PNG chunk's CRC so mutations reach the chunk parsers.
fn fix_png_crcs(bytes: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= bytes.len()) else {
            return;
        };
        let mut crc = flate2::Crc::new();
        crc.update(&bytes[at + 4..end]);
        bytes[end..end + 4].copy_from_slice(&crc.sum().to_be_bytes());
        at = end + 4;
    }
}

/// Pixel cap for the fuzz (keeps debug decoding fast) and the allocation cap that goes with it.
const FUZZ_PIXELS: u64 = 1 << 16;
const FUZZ_ALLOC_CAP: usize = 64 << 20;
const CASES_PER_SEED: u64 = 2000;

#[test]
fn mutated_images_never_panic_or_overallocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = std::time::Instant::now();
    let (mut ok, mut err) = (0usize, 0usize);
    let mut failures = Vec::new();
    // Keep the panic messages of caught panics out of the test output; they are reported below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for (s, (name, seed)) in seeds().into_iter().enumerate() {
        assert!(
            decode_image_bytes(&seed).is_ok(),
            "seed {name} does not decode"
        );
        for case in 0..CASES_PER_SEED {
            let id = (s as u64) << 32 | case;
            let mut rng = Rng::new(0x5EED_0000 ^ id);
            let mut bytes = seed.clone();
            let edits = mutate(&mut rng, &mut bytes);
            if name.starts_with("png") && rng.below(4) != 0 {
                fix_png_crcs(&mut bytes);
            }
            let (result, peak) = measure(|| {
                catch_unwind(AssertUnwindSafe(|| {
                    decode_image_bytes_limited(&bytes, FUZZ_PIXELS)
                }))
            });
            let what = format!(
                "{name} case {case} (rng seed {:#x}): {edits:?}",
                0x5EED_0000 ^ id
            );
            match result {
                Err(_) => failures.push(format!("{what}: panicked")),
                Ok(Ok(img)) => {
                    ok += 1;
                    if img.data.len() != img.width * img.height * 3
                        || img.width == 0
                        || img.height == 0
                    {
                        failures.push(format!(
                            "{what}: {}×{} with {} bytes",
                            img.width,
                            img.height,
                            img.data.len()
                        ));
                    }
                }
                Ok(Err(_)) => err += 1,
            }
            if peak > FUZZ_ALLOC_CAP {
                failures.push(format!("{what}: allocated {peak} bytes"));
            }
        }
    }
    std::panic::set_hook(hook);
    eprintln!(
        "fuzz: {ok} decoded, {err} refused, {} failures in {:.1?}",
        failures.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        ok > 0 && err > 0,
        "the mutations should both break and spare files"
    );
}

// ---------------------------------------------------------------------------------------------
// Huge declared sizes.

/// A PNG whose IHDR (with a valid CRC) declares `w × h` RGB, followed by a tiny IDAT.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = png_bytes(
        1,
        1,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        None,
        None,
        &[1, 2, 3],
    );
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    fix_png_crcs(&mut bytes);
    bytes
}

fn jpeg_declaring(w: u16, h: u16) -> Vec<u8> {
    let mut bytes = testutil::tiny_jpeg(&[144, 128, 144]);
    bytes[JPEG_SOF_HEIGHT..JPEG_SOF_HEIGHT + 2].copy_from_slice(&h.to_be_bytes());
    bytes[JPEG_SOF_HEIGHT + 2..JPEG_SOF_HEIGHT + 4].copy_from_slice(&w.to_be_bytes());
    bytes
}

#[test]
fn huge_declared_sizes_are_refused_from_the_header() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The seeds are sound: the patched headers are what is refused.
    assert_eq!(decode_image_bytes(&jpeg_declaring(8, 8)).unwrap().width, 8);
    let cases = [
        (
            "png 100000x100000",
            png_declaring(100_000, 100_000),
            "100000×100000",
        ),
        (
            "png 2^31-1 x 1",
            png_declaring(0x7FFF_FFFF, 1),
            "2147483647×1",
        ),
        ("png 8192x8193", png_declaring(8192, 8193), "8192×8193"),
        (
            "jpeg 65535x65535",
            jpeg_declaring(65535, 65535),
            "65535×65535",
        ),
        ("jpeg 65535x1025", jpeg_declaring(65535, 1025), "65535×1025"),
    ];
    for (name, bytes, size) in cases {
        let (result, peak) = measure(|| decode_image_bytes(&bytes));
        let reason = result.expect_err(name);
        assert!(reason.contains(size), "{name}: {reason}");
        assert!(reason.contains("limit"), "{name}: {reason}");
        assert!(peak < 32 << 20, "{name}: allocated {peak} bytes");
    }
    // Through a file: the error names it.
    let dir = std::env::temp_dir().join(format!("nag-fuzz-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, bytes) in [
        ("huge.png", png_declaring(100_000, 100_000)),
        ("huge.jpg", jpeg_declaring(65535, 65535)),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, &bytes).unwrap();
        let err = decode_image(&path).unwrap_err().to_string();
        assert!(err.contains(file) && err.contains("limit"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The limit is width · height (8192 × 8192 = MAX_IMAGE_PIXELS is allowed), so a large but
    // allowed size only fails for want of data.
    let reason = decode_image_bytes(&png_declaring(8192, 8192)).unwrap_err();
    assert!(!reason.contains("limit"), "{reason}");
    assert_eq!(MAX_IMAGE_PIXELS, 8192 * 8192);
}
