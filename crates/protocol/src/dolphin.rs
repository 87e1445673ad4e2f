//! The Linkis `.dolphin` result-set file format.
//!
//! `dolphin` + the type as 10 zero-padded digits, then a metadata record, then
//! one record per row. A TEXT record is `[10-digit byte length][bytes]` and its
//! metadata record is `NULL`. A TABLE record is
//! `[10-digit len][10-digit index len][len1,len2,...,][cell bytes...]` where
//! `len` counts everything after itself; the metadata record encodes
//! `[name1, type1, comment1, name2, ...]` the same way. NULL cells are
//! written as `LINKIS_NULL`.

use crate::error::HangarError;

pub const MAGIC: &[u8] = b"dolphin";
pub const NULL_CELL: &str = "LINKIS_NULL";
pub const TEXT: u32 = 1;
pub const TABLE: u32 = 2;
const HEADER_LEN: usize = 17;

/// One column of a TABLE result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// A Linkis type name: `string`, `int`, `bigint`, `double`, `boolean`, ...
    pub data_type: String,
    pub comment: String,
}

/// A decoded result set. TEXT rows hold exactly one cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSet {
    pub rs_type: u32,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Option<String>>>,
}

pub fn header(rs_type: u32) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(format!("{rs_type:010}").as_bytes());
    out
}

/// The metadata record of a TEXT result set.
pub fn text_meta() -> Vec<u8> {
    text_line("NULL")
}

pub fn text_line(line: &str) -> Vec<u8> {
    let mut out = format!("{:010}", line.len()).into_bytes();
    out.extend_from_slice(line.as_bytes());
    out
}

pub fn table_meta(columns: &[Column]) -> Vec<u8> {
    let cells: Vec<Option<&str>> = columns
        .iter()
        .flat_map(|c| [Some(c.name.as_str()), Some(c.data_type.as_str()), Some(c.comment.as_str())])
        .collect();
    table_row(&cells)
}

pub fn table_row(cells: &[Option<&str>]) -> Vec<u8> {
    let mut index = String::new();
    let mut data = Vec::new();
    for cell in cells {
        let v = cell.unwrap_or(NULL_CELL);
        index.push_str(&v.len().to_string());
        index.push(',');
        data.extend_from_slice(v.as_bytes());
    }
    let len = data.len() + index.len() + 10;
    let mut out = format!("{len:010}{:010}", index.len()).into_bytes();
    out.extend_from_slice(index.as_bytes());
    out.extend_from_slice(&data);
    out
}

fn read_len(buf: &[u8], pos: &mut usize) -> Result<usize, HangarError> {
    let s = buf.get(*pos..*pos + 10).ok_or_else(|| corrupt("truncated length"))?;
    *pos += 10;
    std::str::from_utf8(s).ok().and_then(|s| s.parse::<usize>().ok()).ok_or_else(|| corrupt("length is not 10 digits"))
}

fn corrupt(why: &str) -> HangarError {
    HangarError::internal(format!("corrupt result set: {why}"))
}

fn utf8(b: &[u8]) -> Result<String, HangarError> {
    String::from_utf8(b.to_vec()).map_err(|_| corrupt("cell is not UTF-8"))
}

/// Decode a TABLE record into its cells.
fn decode_table_record(buf: &[u8], pos: &mut usize) -> Result<Vec<Option<String>>, HangarError> {
    let len = read_len(buf, pos)?;
    let end = pos.checked_add(len).filter(|e| *e <= buf.len()).ok_or_else(|| corrupt("truncated row"))?;
    let idx_len = read_len(buf, pos)?;
    let idx_end = pos.checked_add(idx_len).filter(|e| *e <= end).ok_or_else(|| corrupt("bad index"))?;
    let index = std::str::from_utf8(&buf[*pos..idx_end]).map_err(|_| corrupt("bad index"))?;
    *pos = idx_end;
    let mut cells = Vec::new();
    for part in index.split(',').filter(|p| !p.is_empty()) {
        let n: usize = part.parse().map_err(|_| corrupt("bad cell length"))?;
        let cell_end = pos.checked_add(n).filter(|e| *e <= end).ok_or_else(|| corrupt("cell overruns row"))?;
        let v = utf8(&buf[*pos..cell_end])?;
        *pos = cell_end;
        cells.push(if v == NULL_CELL { None } else { Some(v) });
    }
    if *pos != end {
        return Err(corrupt("row length does not match its cells"));
    }
    Ok(cells)
}

/// Decode a whole result-set file.
pub fn decode(buf: &[u8]) -> Result<ResultSet, HangarError> {
    let page = read_page(buf, 0, usize::MAX, usize::MAX)?;
    Ok(ResultSet { rs_type: page.rs_type, columns: page.columns, rows: page.rows })
}

/// A page of a result set read from a stream, and how many rows it has in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub rs_type: u32,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Option<String>>>,
    pub total: usize,
}

fn read_exact(r: &mut impl std::io::BufRead, n: usize, why: &str) -> Result<Vec<u8>, HangarError> {
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut *r, n as u64), &mut buf)
        .map_err(|e| HangarError::internal(format!("cannot read the result set: {e}")))?;
    if buf.len() != n {
        return Err(corrupt(why));
    }
    Ok(buf)
}

/// The next record's length, or None at the end of the stream.
fn next_len(r: &mut impl std::io::BufRead) -> Result<Option<usize>, HangarError> {
    let at_end =
        r.fill_buf().map_err(|e| HangarError::internal(format!("cannot read the result set: {e}")))?.is_empty();
    if at_end {
        return Ok(None);
    }
    let digits = read_exact(r, 10, "truncated length")?;
    read_len(&digits, &mut 0).map(Some)
}

/// Read rows `skip..skip + take` of a result set from a stream, holding one
/// page in memory (at most `max_bytes` of it) however large the file is; the
/// rest is read past, to count the rows.
pub fn read_page(
    mut r: impl std::io::BufRead,
    skip: usize,
    take: usize,
    max_bytes: usize,
) -> Result<Page, HangarError> {
    let head = read_exact(&mut r, HEADER_LEN, "missing dolphin header")?;
    if &head[..7] != MAGIC {
        return Err(corrupt("missing dolphin header"));
    }
    let rs_type: u32 =
        std::str::from_utf8(&head[7..]).ok().and_then(|s| s.parse().ok()).ok_or_else(|| corrupt("bad type"))?;
    fn record(r: &mut impl std::io::BufRead, rs_type: u32, len: usize) -> Result<Vec<Option<String>>, HangarError> {
        let body = read_exact(r, len, "truncated record")?;
        if rs_type == TABLE {
            let mut whole = format!("{len:010}").into_bytes();
            whole.extend_from_slice(&body);
            decode_table_record(&whole, &mut 0)
        } else {
            Ok(vec![Some(utf8(&body)?)])
        }
    }
    let mut columns = Vec::new();
    if let Some(len) = next_len(&mut r)? {
        let meta = record(&mut r, rs_type, len)?;
        if rs_type == TABLE {
            if meta.len() % 3 != 0 {
                return Err(corrupt("metadata is not name/type/comment triples"));
            }
            columns = meta
                .chunks(3)
                .map(|c| Column {
                    name: c[0].clone().unwrap_or_default(),
                    data_type: c[1].clone().unwrap_or_else(|| "string".into()),
                    comment: c[2].clone().unwrap_or_else(|| "NULL".into()),
                })
                .collect();
        }
    }
    let (mut rows, mut total, mut bytes) = (Vec::new(), 0usize, 0usize);
    while let Some(len) = next_len(&mut r)? {
        if total >= skip && rows.len() < take {
            bytes = bytes.saturating_add(len);
            if bytes > max_bytes {
                return Err(HangarError::invalid(format!(
                    "this page of the result set is larger than {max_bytes} bytes; ask for fewer rows (pageSize)"
                )));
            }
            rows.push(record(&mut r, rs_type, len)?);
        } else {
            let skipped = std::io::copy(&mut std::io::Read::take(&mut r, len as u64), &mut std::io::sink())
                .map_err(|e| HangarError::internal(format!("cannot read the result set: {e}")))?;
            if skipped != len as u64 {
                return Err(corrupt("truncated record"));
            }
        }
        total += 1;
    }
    Ok(Page { rs_type, columns, rows, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linkis_example_row() {
        let row = table_row(&[Some("peace1"), Some("johnnwang1"), Some("101"), Some("true"), Some("11.51")]);
        assert_eq!(
            std::str::from_utf8(&row).expect("utf8"),
            "000000004900000000116,10,3,4,5,peace1johnnwang1101true11.51"
        );
    }

    #[test]
    fn pages_are_read_from_a_stream_with_the_total() {
        let mut f = header(TEXT);
        f.extend(text_meta());
        for i in 0..10 {
            f.extend(text_line(&format!("line {i}")));
        }
        let p = read_page(&f[..], 3, 2, 1 << 20).expect("page");
        assert_eq!((p.total, p.rows.len()), (10, 2));
        assert_eq!(p.rows[0][0].as_deref(), Some("line 3"));
        let p = read_page(&f[..], 9, 5, 1 << 20).expect("last page");
        assert_eq!((p.total, p.rows.len()), (10, 1));
        assert!(read_page(&f[..], 0, 10, 12).is_err(), "a page over its byte limit is refused");
        assert!(
            read_page(&f[..f.len() - 2], 0, 1, 1 << 20).is_err(),
            "a truncated file is corrupt, even past the page"
        );
    }

    #[test]
    fn text_round_trip() {
        let mut f = header(TEXT);
        f.extend(text_meta());
        f.extend(text_line("hi"));
        f.extend(text_line(""));
        f.extend(text_line("héllo, wörld"));
        assert!(f.starts_with(b"dolphin0000000001"));
        let rs = decode(&f).expect("decode");
        assert_eq!(rs.rows, vec![vec![Some("hi".into())], vec![Some("".into())], vec![Some("héllo, wörld".into())]]);
    }

    #[test]
    fn table_round_trip() {
        let cols = vec![
            Column { name: "a".into(), data_type: "int".into(), comment: "NULL".into() },
            Column { name: "b".into(), data_type: "string".into(), comment: "".into() },
        ];
        let mut f = header(TABLE);
        f.extend(table_meta(&cols));
        f.extend(table_row(&[Some("1"), None]));
        f.extend(table_row(&[Some(""), Some("x,\ny")]));
        let rs = decode(&f).expect("decode");
        assert_eq!(rs.columns, cols);
        assert_eq!(rs.rows[0], vec![Some("1".to_string()), None]);
        assert_eq!(rs.rows[1], vec![Some(String::new()), Some("x,\ny".to_string())]);
    }

    #[test]
    fn corrupt_files_error() {
        assert!(decode(b"nope").is_err());
        let mut f = header(TABLE);
        f.extend(b"0000000099");
        assert!(decode(&f).is_err());
    }

    use proptest::prelude::*;

    /// Cells with the awkward cases: empty, NULL, commas, newlines, multi-byte text.
    fn cell() -> impl Strategy<Value = Option<String>> {
        prop_oneof![Just(None), Just(Some(String::new())), "[a-z,\\n\\r\"' 0-9é中🚀]{0,12}".prop_map(Some),]
            .prop_filter("the literal NULL marker cannot round-trip", |c| c.as_deref() != Some(NULL_CELL))
    }

    proptest! {
        #[test]
        fn table_round_trips(ncols in 1usize..6, rows in proptest::collection::vec(proptest::collection::vec(cell(), 6), 0..20)) {
            let cols: Vec<Column> = (0..ncols)
                .map(|i| Column { name: format!("c,{i}\n"), data_type: ["int", "string", "double"][i % 3].into(), comment: "é".into() })
                .collect();
            let rows: Vec<Vec<Option<String>>> = rows.into_iter().map(|r| r.into_iter().take(ncols).collect()).collect();
            let mut f = header(TABLE);
            f.extend(table_meta(&cols));
            for r in &rows {
                let cells: Vec<Option<&str>> = r.iter().map(|c| c.as_deref()).collect();
                f.extend(table_row(&cells));
            }
            let rs = decode(&f).expect("decode");
            prop_assert_eq!(rs.columns, cols);
            prop_assert_eq!(rs.rows, rows);
        }

        #[test]
        fn text_round_trips(lines in proptest::collection::vec("[^\\n]{0,20}", 0..20)) {
            let mut f = header(TEXT);
            f.extend(text_meta());
            for l in &lines {
                f.extend(text_line(l));
            }
            let rs = decode(&f).expect("decode");
            let back: Vec<String> = rs.rows.into_iter().map(|r| r.into_iter().next().flatten().unwrap_or_default()).collect();
            prop_assert_eq!(back, lines);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut f = header(TABLE);
            f.extend(bytes);
            let _ = decode(&f);
        }
    }
}
