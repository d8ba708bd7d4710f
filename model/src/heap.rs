//! Returning memory a load no longer needs to the operating system: freed heap, and pages of
//! mapped weight files.
//!
//! Loading a model's pieces allocates far more than it keeps: the `tokenizers` crate's own
//! parse of Gemma-3's 33 MB `tokenizer.json` went through about 350 MB of temporaries (the
//! compact model of [`crate::bpe`] now reads it through about 55 MB); ONNX Runtime builds each
//! shard's graph, reads and prepacks its weights, then frees the graph copies. glibc's
//! `malloc` keeps such freed chunks in the process (interleaved with live ones, so the heap
//! top cannot shrink), and they stay resident: measured on Gemma-3-270M q4, 180 MB after the
//! crate's tokenizer parse and about 120 MB after the shards (`tests/gemma_rss.rs`).
//! [`release_free_heap`] hands those pages back; the loaders call it when they finish, and a
//! `StageRunner` when it is dropped. [`release_file_pages`] does the same for the pages of
//! weight files ONNX Runtime keeps mapped after prepacking them. On other C libraries and
//! systems they do nothing.

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

/// Asks the kernel to reclaim the resident pages of this process's file mappings under `dir` (a
/// model's folder) and returns how many bytes were mapped there. ONNX Runtime maps a shard's
/// external weights and, after prepacking them into its own buffers, keeps some mapped whose
/// pages it no longer reads (measured on Gemma-3-270M q4: the head's `MatMulNBits` scales,
/// 21 MB, and the embedding table's pages the head's packing touched). `MADV_PAGEOUT` (Linux
/// 5.4) reclaims clean file pages and never changes what memory holds: a later read faults
/// the same bytes back from the file, so what is still read (the embedding rows a generation
/// looks up) returns, and only that. Pages another mapping also holds are left by the kernel,
/// and so are pages a private mapping has written (ONNX Runtime maps external data
/// `rw-p`; without swap, anonymous pages stay). Because the advice cannot destroy data, a
/// mapping replaced between reading `/proc/self/maps` and the call is harmless. Elsewhere it
/// does nothing and returns 0.
pub fn release_file_pages(dir: &std::path::Path) -> u64 {
    #[cfg(target_os = "linux")]
    {
        let Ok(dir) = dir.canonicalize() else {
            return 0;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return 0;
        };
        let mut bytes = 0;
        for line in maps.lines() {
            // start-end perms offset dev inode path
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else {
                continue;
            };
            let Some(path) = f.nth(3) else {
                continue;
            };
            if !std::path::Path::new(path).starts_with(&dir) {
                continue;
            }
            if !perms.starts_with('r') {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            // SAFETY: `MADV_PAGEOUT` is a hint that only moves pages out of memory (clean file
            // pages dropped, others written back or left); contents are never changed, so no
            // memory this process uses, mapped here or not, is affected.
            #[allow(unsafe_code)]
            let rc = unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT)
            };
            if rc == 0 {
                bytes += (end - start) as u64;
            }
        }
        bytes
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        0
    }
}
