//! Zero-filled, 256-byte aligned host buffers: the CPU executor's regions.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use rfnc_bundle::SLOT_ALIGN;

/// An owned, zero-initialised byte buffer aligned to [`SLOT_ALIGN`]. Kernels write it through
/// raw pointers from [`HostBuffer::as_mut_ptr`]; the slice accessors are used only while no
/// kernel runs.
pub(crate) struct HostBuffer {
    ptr: NonNull<u8>,
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
        let layout = Layout::from_size_align(len, SLOT_ALIGN as usize).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(HostBuffer { ptr, layout })
    }

    pub(crate) fn len(&self) -> usize {
        self.layout.size()
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
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
