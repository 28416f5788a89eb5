//! File bodies in Postgres (`files`, `file_chunks`): uploaded batch inputs and generated
//! batch outputs. A body is written and read one chunk (256 KiB) at a time, so memory
//! stays flat whatever the file's size. This module owns storage only; the HTTP shapes are
//! in the api crate.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// Bytes per stored chunk. Small enough that the buffers each pooled Postgres connection
/// keeps after carrying one stay small; large enough that a 200 MB file is 800 rows.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// A stored file's description.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FileRow {
    pub id: String,
    pub owner: String,
    pub purpose: String,
    pub filename: String,
    pub bytes: i64,
    pub lines: i32,
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Starts a file; it stays invisible until [`FileWriter::finish`].
    pub async fn create_file(
        &self,
        id: &str,
        owner: &str,
        purpose: &str,
        filename: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO files (id, owner, purpose, filename, status) VALUES ($1, $2, $3, $4, 'uploading')",
        )
        .bind(id)
        .bind(owner)
        .bind(purpose)
        .bind(filename)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A finished file.
    pub async fn file(&self, id: &str) -> Result<Option<FileRow>, StoreError> {
        Ok(sqlx::query_as::<_, FileRow>(
            "SELECT id, owner, purpose, filename, bytes, lines, created_at
             FROM files WHERE id = $1 AND status = 'processed'",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Chunk `seq` of a file's body; `None` past the end.
    pub async fn file_chunk(&self, id: &str, seq: i32) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT data FROM file_chunks WHERE file_id = $1 AND seq = $2")
                .bind(id)
                .bind(seq)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Deletes a file and its body; `false` if there was none.
    pub async fn delete_file(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM files WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether a batch that has not finished reads this file.
    pub async fn file_in_use(&self, id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM batches WHERE input_file_id = $1
                 AND status IN ('validating', 'in_progress', 'finalizing', 'cancelling'))",
        )
        .bind(id)
        .fetch_one(self.pool())
        .await?)
    }

    /// Writes a file body chunk by chunk.
    pub fn file_writer(&self, id: &str) -> FileWriter {
        FileWriter {
            store: self.clone(),
            id: id.to_string(),
            buf: Vec::with_capacity(CHUNK_BYTES),
            seq: 0,
            bytes: 0,
            lines: 0,
            at_line_start: true,
        }
    }

    /// Reads a file body line by line.
    pub fn file_lines(&self, id: &str, max_line: usize) -> FileLines {
        FileLines {
            store: self.clone(),
            id: id.to_string(),
            seq: 0,
            chunk: Vec::new(),
            pos: 0,
            eof: false,
            line_no: 0,
            max_line,
        }
    }
}

/// Appends to a file body, storing a chunk whenever [`CHUNK_BYTES`] have gathered.
pub struct FileWriter {
    store: Store,
    id: String,
    buf: Vec<u8>,
    seq: i32,
    bytes: u64,
    lines: u32,
    at_line_start: bool,
}

impl FileWriter {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Lines so far (a last line without a newline counts).
    pub fn lines(&self) -> u32 {
        self.lines
    }

    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        self.bytes += data.len() as u64;
        for &b in data {
            if self.at_line_start && b != b'\n' {
                self.lines += 1;
                self.at_line_start = false;
            }
            if b == b'\n' {
                self.at_line_start = true;
            }
        }
        while !data.is_empty() {
            let room = CHUNK_BYTES - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        sqlx::query("INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, $2, $3)")
            .bind(&self.id)
            .bind(self.seq)
            .bind(&self.buf)
            .execute(self.store.pool())
            .await?;
        self.seq += 1;
        self.buf.clear();
        Ok(())
    }

    /// Stores what is left and makes the file visible as `purpose`.
    pub async fn finish(mut self, purpose: &str) -> Result<(u64, u32), StoreError> {
        self.flush().await?;
        sqlx::query(
            "UPDATE files SET status = 'processed', purpose = $2, bytes = $3, lines = $4 WHERE id = $1",
        )
        .bind(&self.id)
        .bind(purpose)
        .bind(self.bytes as i64)
        .bind(self.lines as i32)
        .execute(self.store.pool())
        .await?;
        Ok((self.bytes, self.lines))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("line {line} is longer than {max} bytes")]
    TooLong { line: u32, max: usize },
}

/// A file body as lines, read one chunk at a time. Line numbers start at 1 and count
/// every physical line, blank ones included.
pub struct FileLines {
    store: Store,
    id: String,
    seq: i32,
    chunk: Vec<u8>,
    pos: usize,
    eof: bool,
    line_no: u32,
    max_line: usize,
}

impl FileLines {
    /// The next line (without its `\n` or `\r\n`) and its number.
    pub async fn next_line(&mut self) -> Result<Option<(u32, Vec<u8>)>, LineError> {
        let mut line: Vec<u8> = Vec::new();
        loop {
            if self.pos >= self.chunk.len() {
                if self.eof {
                    break;
                }
                match self.store.file_chunk(&self.id, self.seq).await? {
                    Some(data) => {
                        self.chunk = data;
                        self.pos = 0;
                        self.seq += 1;
                    }
                    None => {
                        self.eof = true;
                        self.chunk = Vec::new();
                        self.pos = 0;
                    }
                }
                continue;
            }
            let rest = &self.chunk[self.pos..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(n) => {
                    line.extend_from_slice(&rest[..n]);
                    self.pos += n + 1;
                    return self.emit(line).map(Some);
                }
                None => {
                    line.extend_from_slice(rest);
                    self.pos = self.chunk.len();
                }
            }
            if line.len() > self.max_line {
                return Err(LineError::TooLong {
                    line: self.line_no + 1,
                    max: self.max_line,
                });
            }
        }
        if line.is_empty() {
            return Ok(None);
        }
        self.emit(line).map(Some)
    }

    fn emit(&mut self, mut line: Vec<u8>) -> Result<(u32, Vec<u8>), LineError> {
        self.line_no += 1;
        if line.len() > self.max_line {
            return Err(LineError::TooLong {
                line: self.line_no,
                max: self.max_line,
            });
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok((self.line_no, line))
    }
}
