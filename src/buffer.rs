//! Buffer sequences: what a send takes and what a receive fills.
//!
//! An asynchronous operation takes its buffers by value and owns them until it
//! completes (the safe form of Asio's "keep the buffers valid until the handler
//! runs"). A sequence of several buffers goes out as ONE datagram through
//! scatter/gather I/O.

use smallvec::SmallVec;
use std::io::{IoSlice, IoSliceMut};
use std::rc::Rc;
use std::sync::Arc;

/// The most buffers one system call accepts (`IOV_MAX` on Linux). A sequence
/// with more fails with [`crate::Error::INVALID_ARGUMENT`] instead of being
/// cut short.
pub const MAX_BUFFERS: usize = 1024;

/// Inline room for scatter/gather lists before they spill to the heap.
pub(crate) const INLINE_SLICES: usize = 8;

/// Gather list for a send.
pub(crate) type ConstSlices<'a> = SmallVec<[IoSlice<'a>; INLINE_SLICES]>;
/// Scatter list for a receive.
pub(crate) type MutSlices<'a> = SmallVec<[IoSliceMut<'a>; INLINE_SLICES]>;

/// One contiguous, readable buffer.
pub trait ConstBuffer {
    /// The bytes to send.
    fn as_bytes(&self) -> &[u8];
}

/// One contiguous, writable buffer.
pub trait MutableBuffer {
    /// The room offered to a receive; its whole length is used.
    fn as_bytes_mut(&mut self) -> &mut [u8];
}

/// One or more buffers sent together as one datagram (or written in order on a
/// stream).
///
/// Implemented for every [`ConstBuffer`] (`Vec<u8>`, `Box<[u8]>`, `String`,
/// `&[u8]`, `&str`, `[u8; N]`, `Rc<[u8]>`, `Arc<[u8]>`, ...) and for sequences
/// of them: `Vec<T>`, `[T; N]` and tuples of up to four buffers.
pub trait ConstBufferSequence {
    /// How many buffers the sequence holds.
    fn buffer_count(&self) -> usize;
    /// Appends each buffer, in order, to `out`.
    fn gather<'a>(&'a self, out: &mut dyn FnMut(&'a [u8]));
}

/// One or more buffers that a receive fills in order.
///
/// Implemented for every [`MutableBuffer`] (`Vec<u8>`, whose length is the room
/// offered; `Box<[u8]>`; `[u8; N]`; `&mut [u8]`) and for `Vec<T>` and `[T; N]` of them.
pub trait MutableBufferSequence {
    /// How many buffers the sequence holds.
    fn buffer_count(&self) -> usize;
    /// Hands each buffer, in order, to `out`.
    fn scatter<'a>(&'a mut self, out: &mut dyn FnMut(&'a mut [u8]));
}

macro_rules! const_buffer {
    ($($t:ty => |$s:ident| $e:expr;)*) => {$(
        impl ConstBuffer for $t {
            fn as_bytes(&self) -> &[u8] { let $s = self; $e }
        }
        impl ConstBufferSequence for $t {
            fn buffer_count(&self) -> usize { 1 }
            fn gather<'a>(&'a self, out: &mut dyn FnMut(&'a [u8])) { out(self.as_bytes()) }
        }
    )*};
}

const_buffer! {
    Vec<u8> => |s| s;
    Box<[u8]> => |s| s;
    String => |s| String::as_bytes(s);
    Rc<[u8]> => |s| s;
    Arc<[u8]> => |s| s;
    Rc<Vec<u8>> => |s| s;
    Arc<Vec<u8>> => |s| s;
    &[u8] => |s| s;
    &str => |s| str::as_bytes(s);
    &Vec<u8> => |s| s;
}

impl<const N: usize> ConstBuffer for [u8; N] {
    fn as_bytes(&self) -> &[u8] {
        self
    }
}
impl<const N: usize> ConstBufferSequence for [u8; N] {
    fn buffer_count(&self) -> usize {
        1
    }
    fn gather<'a>(&'a self, out: &mut dyn FnMut(&'a [u8])) {
        out(self)
    }
}
impl<const N: usize> ConstBuffer for &[u8; N] {
    fn as_bytes(&self) -> &[u8] {
        &self[..]
    }
}
impl<const N: usize> ConstBufferSequence for &[u8; N] {
    fn buffer_count(&self) -> usize {
        1
    }
    fn gather<'a>(&'a self, out: &mut dyn FnMut(&'a [u8])) {
        out(&self[..])
    }
}

impl<T: ConstBuffer> ConstBufferSequence for Vec<T> {
    fn buffer_count(&self) -> usize {
        self.len()
    }
    fn gather<'a>(&'a self, out: &mut dyn FnMut(&'a [u8])) {
        self.iter().for_each(|b| out(b.as_bytes()))
    }
}

impl<T: ConstBuffer, const N: usize> ConstBufferSequence for [T; N] {
    fn buffer_count(&self) -> usize {
        N
    }
    fn gather<'a>(&'a self, out: &mut dyn FnMut(&'a [u8])) {
        self.iter().for_each(|b| out(b.as_bytes()))
    }
}

impl<T: ConstBuffer> ConstBufferSequence for &[T] {
    fn buffer_count(&self) -> usize {
        self.len()
    }
    fn gather<'a>(&'a self, out: &mut dyn FnMut(&'a [u8])) {
        self.iter().for_each(|b| out(b.as_bytes()))
    }
}

macro_rules! const_tuple {
    ($n:expr; $($t:ident . $i:tt),*) => {
        impl<$($t: ConstBuffer),*> ConstBufferSequence for ($($t,)*) {
            fn buffer_count(&self) -> usize { $n }
            fn gather<'a>(&'a self, out: &mut dyn FnMut(&'a [u8])) {
                $(out(self.$i.as_bytes());)*
            }
        }
    };
}
const_tuple!(1; A.0);
const_tuple!(2; A.0, B.1);
const_tuple!(3; A.0, B.1, C.2);
const_tuple!(4; A.0, B.1, C.2, D.3);

macro_rules! mutable_buffer {
    ($($t:ty),*) => {$(
        impl MutableBuffer for $t {
            fn as_bytes_mut(&mut self) -> &mut [u8] { &mut self[..] }
        }
        impl MutableBufferSequence for $t {
            fn buffer_count(&self) -> usize { 1 }
            fn scatter<'a>(&'a mut self, out: &mut dyn FnMut(&'a mut [u8])) { out(&mut self[..]) }
        }
    )*};
}
mutable_buffer!(Vec<u8>, Box<[u8]>, &mut [u8], &mut Vec<u8>);

impl<const N: usize> MutableBuffer for [u8; N] {
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}
impl<const N: usize> MutableBufferSequence for [u8; N] {
    fn buffer_count(&self) -> usize {
        1
    }
    fn scatter<'a>(&'a mut self, out: &mut dyn FnMut(&'a mut [u8])) {
        out(self)
    }
}
impl<const N: usize> MutableBuffer for &mut [u8; N] {
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self[..]
    }
}
impl<const N: usize> MutableBufferSequence for &mut [u8; N] {
    fn buffer_count(&self) -> usize {
        1
    }
    fn scatter<'a>(&'a mut self, out: &mut dyn FnMut(&'a mut [u8])) {
        out(&mut self[..])
    }
}

impl<T: MutableBuffer> MutableBufferSequence for Vec<T> {
    fn buffer_count(&self) -> usize {
        self.len()
    }
    fn scatter<'a>(&'a mut self, out: &mut dyn FnMut(&'a mut [u8])) {
        self.iter_mut().for_each(|b| out(b.as_bytes_mut()))
    }
}

impl<T: MutableBuffer, const N: usize> MutableBufferSequence for [T; N] {
    fn buffer_count(&self) -> usize {
        N
    }
    fn scatter<'a>(&'a mut self, out: &mut dyn FnMut(&'a mut [u8])) {
        self.iter_mut().for_each(|b| out(b.as_bytes_mut()))
    }
}

/// The total length of a send's buffers.
/// Copies a datagram's `data` into a scatter list; returns how much fitted
/// (a datagram longer than the buffers is truncated, as the kernel does):
/// a datagram held in memory (read ahead, or simulated) reaching a receive.
pub(crate) fn scatter(data: &[u8], bufs: &mut [IoSliceMut<'_>]) -> usize {
    let mut off = 0;
    for b in bufs.iter_mut() {
        let n = b.len().min(data.len() - off);
        b[..n].copy_from_slice(&data[off..off + n]);
        off += n;
        if off == data.len() {
            break;
        }
    }
    off
}

pub(crate) fn const_len<B: ConstBufferSequence + ?Sized>(bufs: &B) -> usize {
    let mut n = 0;
    bufs.gather(&mut |b| n += b.len());
    n
}

/// The total room of a receive's buffers.
pub(crate) fn mut_len<B: MutableBufferSequence + ?Sized>(bufs: &mut B) -> usize {
    let mut n = 0;
    bufs.scatter(&mut |b| n += b.len());
    n
}

/// The gather list of a sequence, or `None` when it has more buffers than one
/// system call takes.
pub(crate) fn const_slices<B: ConstBufferSequence + ?Sized>(bufs: &B) -> Option<ConstSlices<'_>> {
    if bufs.buffer_count() > MAX_BUFFERS {
        return None;
    }
    let mut v = ConstSlices::new();
    bufs.gather(&mut |b| v.push(IoSlice::new(b)));
    Some(v)
}

/// The scatter list of a sequence, or `None` when it has more buffers than one
/// system call takes.
pub(crate) fn mut_slices<B: MutableBufferSequence + ?Sized>(bufs: &mut B) -> Option<MutSlices<'_>> {
    if bufs.buffer_count() > MAX_BUFFERS {
        return None;
    }
    let mut v = MutSlices::new();
    bufs.scatter(&mut |b| v.push(IoSliceMut::new(b)));
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined<B: ConstBufferSequence>(b: &B) -> Vec<u8> {
        const_slices(b).unwrap().iter().flat_map(|s| s.to_vec()).collect()
    }

    #[test]
    fn sequences_gather_in_order() {
        assert_eq!(joined(&(b"ab".to_vec(), "cd", [b'e'; 1])), b"abcde");
        assert_eq!(joined(&vec![Rc::<[u8]>::from(&b"x"[..]), Rc::from(&b"y"[..])]), b"xy");
        assert_eq!(joined(&[String::from("1"), String::from("2")]), b"12");
        let many = vec![&b"a"[..]; MAX_BUFFERS + 1];
        assert!(const_slices(&many).is_none());
        let mut bufs = [vec![0u8; 2], vec![0u8; 3]];
        assert_eq!(mut_slices(&mut bufs).unwrap().iter().map(|s| s.len()).sum::<usize>(), 5);
    }
}
