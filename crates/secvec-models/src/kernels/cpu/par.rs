//! Splitting row-wise work over rayon's threads.
//!
//! Flex runs an elementwise op in parallel only above 4M elements, and nearly every activation
//! of a small model is smaller (0.2–1.6M elements), so one core idles through most of a training
//! step. These helpers split anything above a few tens of thousands of elements.

use rayon::prelude::*;

/// Work (in elements touched) below which splitting costs more than it saves.
pub const MIN_PARALLEL_WORK: usize = 32 * 1024;

/// How many pieces to cut `rows` rows into, given the work of one row: one per thread, times
/// `oversplit` for uneven rows, never below one row a piece.
pub fn pieces(rows: usize, work_per_row: usize, oversplit: usize) -> usize {
    if rows <= 1 || rows.saturating_mul(work_per_row) < MIN_PARALLEL_WORK {
        return 1;
    }
    (rayon::current_num_threads() * oversplit).clamp(1, rows)
}

/// Calls `f(first_row, rows_chunk)` on consecutive chunks of `out` (rows of `row_len`
/// elements), in parallel when the work is large enough.
pub fn for_row_chunks<F>(out: &mut [f32], row_len: usize, work_per_row: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let n = pieces(rows, work_per_row, 1);
    if n <= 1 {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(n);
    out.par_chunks_mut(per * row_len)
        .enumerate()
        .for_each(|(i, chunk)| f(i * per, chunk));
}

/// Like [`for_row_chunks`] over two outputs with the same row count (`a` rows of `a_len`,
/// `b` rows of `b_len`).
pub fn for_row_chunks2<F>(
    a: &mut [f32],
    a_len: usize,
    b: &mut [f32],
    b_len: usize,
    work_per_row: usize,
    f: F,
) where
    F: Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
{
    let rows = a.len().checked_div(a_len).unwrap_or(0);
    let n = pieces(rows, work_per_row, 1);
    if n <= 1 {
        f(0, a, b);
        return;
    }
    let per = rows.div_ceil(n);
    a.par_chunks_mut(per * a_len)
        .zip(b.par_chunks_mut(per * b_len))
        .enumerate()
        .for_each(|(i, (ca, cb))| f(i * per, ca, cb));
}

/// Maps consecutive row ranges `[start, end)` of `rows` rows to partial results in parallel and
/// returns them in order (for reductions such as a weight gradient summed over rows).
pub fn map_row_ranges<T, F>(rows: usize, work_per_row: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize, usize) -> T + Sync + Send,
{
    let n = pieces(rows, work_per_row, 1);
    let per = rows.div_ceil(n.max(1)).max(1);
    (0..n)
        .into_par_iter()
        .map(|i| f((i * per).min(rows), ((i + 1) * per).min(rows)))
        .collect()
}
