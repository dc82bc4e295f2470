//! The global allocator: mimalloc, asked the way its fast paths expect.
//!
//! The `mimalloc` crate hands every allocation to `mi_malloc_aligned`, with
//! the layout's alignment. In mimalloc 3 that call takes its fast path only
//! for blocks up to 1 KiB; anything larger whose size class is not a power
//! of two goes through the over-allocating aligned path (size + alignment,
//! then adjusted). A proxied request makes three or four such allocations
//! (hyper's header maps, read buffers), about 180 instructions each, and
//! they waste a size class of memory. Word-aligned blocks are what plain
//! `mi_malloc` always returns, so for alignments up to 8 (nearly every Rust
//! type) ginx asks for that, as the standard library does with the system
//! allocator; larger alignments keep the aligned calls.

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// Every mimalloc block is at least this aligned (blocks are whole words).
const WORD_ALIGN: usize = std::mem::size_of::<usize>();

/// mimalloc, with word-aligned requests sent to its unaligned entry points.
pub struct MiMalloc;

// SAFETY: each method forwards to the mimalloc function with the same
// contract; the unaligned ones are used only for alignments every mimalloc
// block already has.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD_ALIGN {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD_ALIGN {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD_ALIGN {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

/// Keep transparent huge pages out of ginx's memory, for the whole process.
///
/// mimalloc asks for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`),
/// so with the kernel's THP in its usual `madvise` mode the first touch of
/// an arena faults in a whole 2 MiB page, and khugepaged later collapses
/// partly used 2 MiB ranges into huge pages again while ginx is idle. For a
/// gateway that is resident memory nobody uses: 10,000 parked keep-alive
/// connections measured 181 to 544 bytes each from one run to the next,
/// with RSS growing in 2 MiB steps while idle; without huge pages, 211
/// to 295 bytes over six runs, and nearly 8 MiB less at start. nginx's heap (glibc malloc)
/// never asks for huge pages either. A proxy's working set is small, so
/// the TLB misses huge pages save do not show (`benches/compare`).
pub fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no
    // memory of ours; it fails only on kernels without it, which is fine.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_asked_for() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 7, 8, 24, 100, 1000, 1500, 3000, 70_000] {
                let size = size.max(align);
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero-sized layout; each block is freed once.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "{layout:?}");
                    p.write_bytes(0xAB, size);
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "{layout:?}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    let r = a.realloc(p, layout, size * 3);
                    assert_eq!(r as usize % align, 0, "{layout:?}");
                    assert_eq!(*r.add(size - 1), 0xAB);
                    a.dealloc(r, Layout::from_size_align(size * 3, align).unwrap());
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
