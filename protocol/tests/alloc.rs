//! Allocation bound: a frame whose length prefixes claim gigabytes fails after allocating
//! little, because the decoder copies strings as it reads them and serde preallocates at
//! most 1 MiB for a claimed sequence. A counting global allocator measures the peak; this
//! file is its own test binary so no other test allocates at the same time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use shoal_protocol::{Activation, GenerateRequest, Kind, decode};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// The test needs a global allocator to measure peak memory; it only forwards to `System`
// and updates two counters.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        // SAFETY: forwards the caller's valid layout to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak bytes allocated above the current level while `f` runs.
fn peak_during(f: impl FnOnce()) -> usize {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst) - base
}

fn header(kind: Kind) -> Vec<u8> {
    vec![0x84, 0x01, kind.code(), 0xf4]
}

fn text(out: &mut Vec<u8>, s: &str) {
    out.push(0x60 + s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

#[test]
fn claimed_huge_lengths_allocate_little() {
    // An activation whose tensor data claims 2^62 bytes, followed by 64 KiB of real bytes.
    let mut act = header(Kind::Activation);
    act.push(0xa6); // map of 6
    for key in ["epoch", "session", "step", "stage", "position"] {
        text(&mut act, key);
        act.push(0x00);
    }
    text(&mut act, "tensor");
    act.push(0xa3);
    text(&mut act, "dtype");
    text(&mut act, "u8");
    text(&mut act, "shape");
    act.extend_from_slice(&[0x81, 0x01]);
    text(&mut act, "data");
    act.push(0x5b); // byte string, 8-byte length
    act.extend_from_slice(&(1u64 << 62).to_be_bytes());
    act.extend(std::iter::repeat_n(7u8, 64 * 1024));
    let peak = peak_during(|| {
        let err = decode::<Activation>(&act).unwrap_err();
        assert_eq!(err.reason(), "truncated", "{err}");
    });
    println!("activation claiming 2^62 bytes: peak allocation {peak} bytes");
    assert!(peak < 512 * 1024, "peak {peak}");

    // A generation request whose prompt claims 2^32 - 1 token ids.
    let mut req = header(Kind::GenerateRequest);
    req.push(0xa1);
    text(&mut req, "prompt");
    req.push(0x9a);
    req.extend_from_slice(&u32::MAX.to_be_bytes());
    req.extend(std::iter::repeat_n(0x01, 1000));
    let peak = peak_during(|| {
        assert_eq!(
            decode::<GenerateRequest>(&req).unwrap_err().reason(),
            "truncated"
        );
    });
    println!("prompt claiming 2^32 tokens: peak allocation {peak} bytes");
    assert!(peak <= 2 * 1024 * 1024, "peak {peak}");
}
