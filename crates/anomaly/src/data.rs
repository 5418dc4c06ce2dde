//! Reading the benchmark files: comma-separated floats, plain or gzip-compressed.

use anyhow::{Context, Result};
use std::io::Read;
use std::path::Path;

use crate::Matrix;

/// Whole file as text, transparently gunzipping `*.gz`.
pub fn read_text(path: &Path) -> Result<String> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut s)
            .with_context(|| format!("gunzip {}", path.display()))?;
        Ok(s)
    } else {
        String::from_utf8(raw).with_context(|| format!("utf-8 in {}", path.display()))
    }
}

/// A header-less matrix of comma-separated floats (one row per line).
pub fn read_matrix(path: &Path) -> Result<Matrix> {
    let text = read_text(path)?;
    let mut data = Vec::new();
    let mut cols = 0usize;
    let mut rows = 0usize;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let before = data.len();
        for f in line.split(',') {
            let v: f32 = f
                .trim()
                .parse()
                .with_context(|| format!("{}:{}: bad number {f:?}", path.display(), i + 1))?;
            anyhow::ensure!(
                v.is_finite(),
                "{}:{}: value {f:?} is not a finite number",
                path.display(),
                i + 1
            );
            data.push(v);
        }
        let c = data.len() - before;
        if rows == 0 {
            cols = c;
        } else {
            anyhow::ensure!(
                c == cols,
                "{}:{}: {c} columns, expected {cols}",
                path.display(),
                i + 1
            );
        }
        rows += 1;
    }
    Ok(Matrix::new(rows, cols, data))
}

/// NAB series file (`timestamp,value` with header): the values, in order.
pub fn read_nab_values(path: &Path) -> Result<Vec<f32>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let val = line.rsplit(',').next().unwrap_or("");
        match val.trim().parse::<f32>() {
            Ok(v) if !v.is_finite() => {
                anyhow::bail!(
                    "{}:{}: value {val:?} is not a finite number",
                    path.display(),
                    i + 1
                )
            }
            Ok(v) => out.push(v),
            Err(_) if i == 0 => continue, // header
            Err(_) => anyhow::bail!("{}:{}: bad value {val:?}", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// Write a scorer file: header `score,alert`, one line per row.
pub fn write_scores(path: &Path, score: &[f32], alert: &[bool]) -> Result<()> {
    use std::fmt::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("making the output directory {}", dir.display()))?;
    }
    let mut s = String::with_capacity(score.len() * 14 + 16);
    s.push_str("score,alert\n");
    for (v, a) in score.iter().zip(alert) {
        let v = if v.is_finite() { *v } else { 0.0 };
        let _ = writeln!(s, "{v:e},{}", u8::from(*a));
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rw-anomaly-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn non_finite_values_are_rejected_with_their_line() {
        let p = write("m.csv", "1,2\n3,nan\n");
        let e = format!("{:#}", read_matrix(&p).unwrap_err());
        assert!(
            e.contains("m.csv:2") && e.contains("not a finite number"),
            "{e}"
        );
        let p = write(
            "n.csv",
            "timestamp,value\n2020-01-01 00:00:00,1\n2020-01-01 00:05:00,inf\n",
        );
        let e = format!("{:#}", read_nab_values(&p).unwrap_err());
        assert!(
            e.contains("n.csv:3") && e.contains("not a finite number"),
            "{e}"
        );
        let p = write("ok.csv", "1,2\n3,4\n");
        assert_eq!(read_matrix(&p).unwrap().data, vec![1.0, 2.0, 3.0, 4.0]);
        let p = write("bad.csv", "1,2\n3,x\n");
        let e = format!("{:#}", read_matrix(&p).unwrap_err());
        assert!(e.contains("bad.csv:2") && e.contains("bad number"), "{e}");
    }
}
