//! nom plumbing shared by the parsers: an error type that remembers where it
//! happened, so every [`ParseError`](crate::ParseError) carries an offset.

use crate::error::{ParseError, ParseErrorKind};
use nom::IResult;

/// A nom error that records the address of the input where it happened;
/// [`finish`] turns that into an offset from the start of the message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WireErr {
    pub kind: ParseErrorKind,
    pub at: usize,
}

impl<'a> nom::error::ParseError<&'a [u8]> for WireErr {
    fn from_error_kind(input: &'a [u8], _kind: nom::error::ErrorKind) -> Self {
        WireErr {
            kind: ParseErrorKind::Truncated,
            at: input.as_ptr() as usize,
        }
    }
    fn append(_input: &'a [u8], _kind: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

pub(crate) type Res<'a, T> = IResult<&'a [u8], T, WireErr>;

/// Fails hard (no backtracking) with `kind` at the start of `input`.
pub(crate) fn fail<T>(input: &[u8], kind: ParseErrorKind) -> Res<'_, T> {
    Err(nom::Err::Failure(WireErr {
        kind,
        at: input.as_ptr() as usize,
    }))
}

/// Runs `parser` over the whole of `buf`, rejecting trailing bytes, and turns
/// the error position into an offset within `buf`.
pub(crate) fn finish<'a, T>(
    buf: &'a [u8],
    parser: impl FnOnce(&'a [u8]) -> Res<'a, T>,
) -> Result<T, ParseError> {
    let base = buf.as_ptr() as usize;
    match parser(buf) {
        Ok(([], value)) => Ok(value),
        Ok((rest, _)) => Err(ParseError {
            kind: ParseErrorKind::TrailingData(rest.len()),
            offset: buf.len() - rest.len(),
        }),
        Err(nom::Err::Error(e)) | Err(nom::Err::Failure(e)) => Err(ParseError {
            kind: e.kind,
            offset: e.at.saturating_sub(base).min(buf.len()),
        }),
        Err(nom::Err::Incomplete(_)) => Err(ParseError {
            kind: ParseErrorKind::Truncated,
            offset: buf.len(),
        }),
    }
}

pub(crate) use nom::number::complete::{be_u16, be_u32, be_u64, be_u8};

/// Takes exactly `n` bytes.
pub(crate) fn take(input: &[u8], n: usize) -> Res<'_, &[u8]> {
    if input.len() < n {
        return fail(input, ParseErrorKind::Truncated);
    }
    Ok((&input[n..], &input[..n]))
}

/// Takes a fixed-size array.
pub(crate) fn array<const N: usize>(input: &[u8]) -> Res<'_, [u8; N]> {
    let (rest, bytes) = take(input, N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok((rest, out))
}
