//! Returning freed heap to the operating system after a large load.
//!
//! Loading a model's pieces allocates far more than it keeps: `tokenizers` parses Gemma-3's
//! 33 MB `tokenizer.json` (262144 tokens, 514906 merges) through about 350 MB of temporaries
//! and keeps about 95 MB; ONNX Runtime builds each shard's graph, reads and prepacks its
//! weights, then frees the graph copies. glibc's `malloc` keeps such freed chunks in the
//! process (interleaved with live ones, so the heap top cannot shrink), and they stay resident:
//! measured on Gemma-3-270M q4, 180 MB after the tokenizer and about 120 MB after the shards
//! (`tests/gemma_rss.rs`). [`release_free_heap`] hands those pages back; the loaders call it
//! when they finish. On other C libraries it does nothing.

/// Returns the free pages of every `malloc` arena to the operating system (glibc's
/// `malloc_trim(0)`, which also releases whole free pages in the middle of the heap, not only
/// at its top). Costs a few milliseconds; call it after a load, not per token.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointers and only walks glibc's own arenas under their
    // locks; any thread may call it at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
