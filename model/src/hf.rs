//! Hugging Face checkpoints: `config.json`, `*.safetensors` (one file or several, read tensor
//! by tensor without loading whole files), optional `tokenizer.json` and
//! `tokenizer_config.json`. [`import`] turns such a folder into a shoal model directory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::Value;

use crate::arch::{self, WeightSource, WeightTensor};
use crate::error::{Error, Result};
use crate::export::{self, ExportOptions};
use crate::manifest::Manifest;
use crate::quant::QuantSpec;

/// Largest safetensors header accepted (bytes): a bound before allocating.
const MAX_HEADER: u64 = 100 << 20;

#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: String,
    shape: Vec<usize>,
    start: u64,
    len: u64,
}

/// The tensors of every `*.safetensors` file in a folder.
#[derive(Debug)]
pub struct SafetensorsWeights {
    files: Vec<PathBuf>,
    tensors: HashMap<String, Entry>,
}

impl SafetensorsWeights {
    /// Indexes every `*.safetensors` file in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(Error::io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Config(format!(
                "no *.safetensors file in {}",
                dir.display()
            )));
        }
        let mut tensors = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            read_header(path, i, &mut tensors)?;
        }
        Ok(SafetensorsWeights { files, tensors })
    }

    /// Names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

fn read_header(path: &Path, file: usize, out: &mut HashMap<String, Entry>) -> Result<()> {
    let mut f = File::open(path).map_err(Error::io(path))?;
    let file_len = f.metadata().map_err(Error::io(path))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(Error::io(path))?;
    let n = u64::from_le_bytes(n);
    let bad = |reason: String| Error::BadTensor {
        name: path.display().to_string(),
        reason,
    };
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(bad(format!(
            "header of {n} bytes in a {file_len}-byte file"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(Error::io(path))?;
    let map: HashMap<String, Value> = serde_json::from_slice(&header).map_err(Error::json(path))?;
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v
            .get("dtype")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|d| d as usize)
                    .collect()
            })
            .unwrap_or_default();
        let offs: Vec<u64> = v
            .get("data_offsets")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let [a, b] = offs[..] else {
            return Err(bad(format!("{name}: bad data_offsets")));
        };
        if b < a || 8 + n + b > file_len {
            return Err(bad(format!("{name}: data {a}..{b} outside the file")));
        }
        out.insert(
            name,
            Entry {
                file,
                dtype,
                shape,
                start: 8 + n + a,
                len: b - a,
            },
        );
    }
    Ok(())
}

impl WeightSource for SafetensorsWeights {
    fn tensor(&mut self, name: &str) -> Result<WeightTensor> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_owned()))?;
        let path = &self.files[e.file];
        let count: usize = e.shape.iter().product();
        let width = match e.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            other => {
                return Err(Error::BadTensor {
                    name: name.to_owned(),
                    reason: format!("dtype {other} (F32, F16, BF16 supported)"),
                });
            }
        };
        if (count * width) as u64 != e.len {
            return Err(Error::BadTensor {
                name: name.to_owned(),
                reason: format!("{} bytes for shape {:?}", e.len, e.shape),
            });
        }
        let mut f = File::open(path).map_err(Error::io(path))?;
        f.seek(SeekFrom::Start(e.start)).map_err(Error::io(path))?;
        let mut raw = vec![0u8; e.len as usize];
        f.read_exact(&mut raw).map_err(Error::io(path))?;
        let data = match e.dtype.as_str() {
            "F32" => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            "F16" => raw
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => raw
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        };
        Ok(WeightTensor {
            dims: e.shape.clone(),
            data,
            source_bits: None,
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Reads `dir/name` as JSON if it exists.
fn read_json(dir: &Path, name: &str) -> Result<Option<Value>> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(Error::json(&path))
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Imports the Hugging Face checkpoint in `dir` into a model directory `out` with f32 shards.
pub fn import(dir: &Path, out: &Path, progress: bool) -> Result<Manifest> {
    import_as(dir, out, progress, None)
}

/// Like [`import`], with linear layers, embedding and head quantised by `quant`.
pub fn import_as(
    dir: &Path,
    out: &Path,
    progress: bool,
    quant: Option<QuantSpec>,
) -> Result<Manifest> {
    let config = read_json(dir, "config.json")?
        .ok_or_else(|| Error::Config(format!("{} has no config.json", dir.display())))?;
    let arch = arch::from_hf_config(&config)?;
    let mut weights = SafetensorsWeights::open(dir)?;
    let tied_in_file = weights.contains("lm_head.weight");
    let tied_flag = arch.dims().tied_embeddings;
    if !tied_flag && !tied_in_file {
        return Err(Error::MissingTensor(
            "lm_head.weight (and tie_word_embeddings is false)".to_owned(),
        ));
    }
    let generation = read_json(dir, "generation_config.json")?;
    let pick = |k: &str| {
        generation
            .as_ref()
            .and_then(|g| g.get(k))
            .or_else(|| config.get(k))
    };
    let tokenizer = dir.join("tokenizer.json");
    let tokenizer = if tokenizer.exists() {
        Some(tokenizer)
    } else {
        tracing::warn!(
            "{} has no tokenizer.json: only --prompt-ids generation will work",
            dir.display()
        );
        None
    };
    let tokenizer_config = Some(dir.join("tokenizer_config.json")).filter(|p| p.exists());
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let opts = ExportOptions {
        name,
        tokenizer,
        tokenizer_config,
        bos_token_id: ids(pick("bos_token_id")).first().copied(),
        eos_token_ids: ids(pick("eos_token_id")),
        progress,
        quant,
    };
    export::export(arch.as_ref(), &mut weights, out, &opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype, TensorView};

    #[test]
    fn reads_f32_f16_bf16_and_rejects_others() {
        let dir = tempfile::tempdir().unwrap();
        let vals = [1.5f32, -2.0, 0.25, 3.0];
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        let i32b = vec![0u8; 16];
        let views = [
            ("a", TensorView::new(Dtype::F32, vec![2, 2], &f32b).unwrap()),
            ("b", TensorView::new(Dtype::F16, vec![4], &f16b).unwrap()),
            (
                "c",
                TensorView::new(Dtype::BF16, vec![1, 4], &bf16b).unwrap(),
            ),
            ("d", TensorView::new(Dtype::I32, vec![4], &i32b).unwrap()),
        ];
        let path = dir.path().join("model.safetensors");
        safetensors::serialize_to_file(views, None, &path).unwrap();
        let mut w = SafetensorsWeights::open(dir.path()).unwrap();
        for name in ["a", "b", "c"] {
            let t = w.tensor(name).unwrap();
            assert_eq!(t.data, vals, "{name}");
        }
        assert_eq!(w.tensor("c").unwrap().dims, vec![1, 4]);
        assert!(matches!(w.tensor("d"), Err(Error::BadTensor { .. })));
        assert!(matches!(w.tensor("zz"), Err(Error::MissingTensor(_))));
        assert!(w.contains("a") && !w.contains("zz"));
    }

    #[test]
    fn truncated_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, 1_000_000u64.to_le_bytes()).unwrap();
        assert!(SafetensorsWeights::open(dir.path()).is_err());
        std::fs::write(
            &path,
            [&20u64.to_le_bytes()[..], br#"{"a":{"dtype":"F32"}}"#].concat(),
        )
        .unwrap();
        assert!(SafetensorsWeights::open(dir.path()).is_err());
    }
}
