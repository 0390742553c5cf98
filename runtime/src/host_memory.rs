//! Zero-filled, 256-byte aligned host buffers: the CPU executor's regions.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use rfnc_bundle::SLOT_ALIGN;

/// An owned, zero-initialised byte buffer aligned to [`SLOT_ALIGN`]. Kernels write it through
/// raw pointers from [`HostBuffer::as_mut_ptr`]; the slice accessors are used only while no
/// kernel runs.
pub(crate) struct HostBuffer {
    /// The first byte of the buffer, `SLOT_ALIGN`-aligned, inside the allocation.
    ptr: NonNull<u8>,
    len: usize,
    /// The allocation: `len + SLOT_ALIGN` bytes at `base`, with the allocator's own
    /// alignment. (Asking the allocator for `SLOT_ALIGN` itself would make it zero every
    /// page up front: `alloc_zeroed` only passes small alignments on to `calloc`, whose
    /// large blocks are fresh zero pages the kernel maps when first touched, so a load
    /// does not pay for the whole arena.)
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is plain owned memory; it is shared with kernel threads only inside a
// scope that ends before the buffer can be touched again.
unsafe impl Send for HostBuffer {}
unsafe impl Sync for HostBuffer {}

impl HostBuffer {
    /// A zeroed buffer of `len` bytes (at least 1), or `None` if it cannot be allocated.
    pub(crate) fn zeroed(len: u64) -> Option<HostBuffer> {
        let len = usize::try_from(len.max(1)).ok()?;
        let align = SLOT_ALIGN as usize;
        let layout = Layout::from_size_align(len.checked_add(align)?, 8).ok()?;
        // SAFETY: the layout has a non-zero size.
        let base = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        let skip = base.as_ptr().align_offset(align);
        // SAFETY: `skip < align`, so `len` bytes from `base + skip` lie in the allocation.
        let ptr = unsafe { base.add(skip) };
        Some(HostBuffer {
            ptr,
            len,
            base,
            layout,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` initialised bytes owned by `self`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.base.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_their_own_length() {
        for len in [1, 255, 256, 1000, 64 << 20] {
            let mut b = HostBuffer::zeroed(len).unwrap();
            assert_eq!(b.as_mut_ptr() as usize % SLOT_ALIGN as usize, 0, "{len}");
            assert_eq!(b.len(), len as usize);
            assert!(b.as_slice().iter().all(|&x| x == 0), "{len}");
            b.as_mut_slice().fill(7);
            assert!(b.as_slice().iter().all(|&x| x == 7));
        }
        assert_eq!(HostBuffer::zeroed(0).unwrap().len(), 1);
    }
}
