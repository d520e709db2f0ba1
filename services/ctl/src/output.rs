//! Printing: aligned tables for people, JSON for scripts.

use serde::Serialize;

/// Prints `rows` under `headers` with columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints JSON objects as a table: one column per `(header, field)`, the
/// field's text in each cell (`-` when absent).
pub fn object_table(objects: &[serde_json::Value], columns: &[(&str, &str)]) {
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = objects
        .iter()
        .map(|o| {
            columns
                .iter()
                .map(|(_, key)| match o.get(*key) {
                    Some(serde_json::Value::String(text)) => text.clone(),
                    None | Some(serde_json::Value::Null) => "-".to_owned(),
                    Some(other) => other.to_string(),
                })
                .collect()
        })
        .collect();
    table(&headers, &rows);
}

/// Prints a value as pretty JSON.
pub fn json<T: Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// A duration in ms as short text: `850ms`, `12.3s`, `4m05s`, `2h10m`.
pub fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1_000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, (ms / 1_000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_well() {
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_345), "12.3s");
        assert_eq!(age(245_000), "4m05s");
        assert_eq!(age(7_800_000), "2h10m");
    }
}
