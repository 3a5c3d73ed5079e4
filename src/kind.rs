//! Tensor kinds: what a block is for, which decides the pages it lives on and the account its
//! bytes are counted in. (The calling thread's current kind, and scopes that set it, are in
//! `heap::tag`.)

use core::fmt;
use core::str::FromStr;

/// Number of tensor kinds.
pub const NUM_KINDS: usize = 6;

/// The kind of tensor a block holds. Each kind has its own slab pages in every thread heap, and
/// its own account of large-block bytes (live, cached, peak, capacity), so statistics can be told
/// apart; large blocks of all kinds share one arena, so a kind's freed pages can serve another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum TensorKind {
    /// Everything that is not a tagged tensor.
    #[default]
    General = 0,
    /// Attention weights and scores (for example `(heads, seq, seq)`).
    Attention = 1,
    /// Key/value cache of the decoder.
    KvCache = 2,
    /// Vision-encoder outputs and patches.
    ImageEmbedding = 3,
    /// Token embeddings and hidden states of the text model.
    TextEmbedding = 4,
    /// Intermediate activations (MLP, projections): short-lived scratch.
    Activation = 5,
}

impl TensorKind {
    /// All kinds, in index order.
    pub const ALL: [TensorKind; NUM_KINDS] = [
        TensorKind::General,
        TensorKind::Attention,
        TensorKind::KvCache,
        TensorKind::ImageEmbedding,
        TensorKind::TextEmbedding,
        TensorKind::Activation,
    ];

    /// Dense index, `0..NUM_KINDS`.
    #[inline(always)]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The kind with index `i`, if any.
    pub const fn from_index(i: usize) -> Option<TensorKind> {
        if i < NUM_KINDS {
            Some(Self::ALL[i])
        } else {
            None
        }
    }

    /// Canonical name (as accepted by `FromStr` and printed in reports).
    pub const fn name(self) -> &'static str {
        match self {
            TensorKind::General => "general",
            TensorKind::Attention => "attention",
            TensorKind::KvCache => "kv_cache",
            TensorKind::ImageEmbedding => "image_embedding",
            TensorKind::TextEmbedding => "text_embedding",
            TensorKind::Activation => "activation",
        }
    }
}

impl fmt::Display for TensorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Accepted spellings (case-insensitive; `-`, ` ` and `_` are interchangeable).
const SPELLINGS: &[(&str, TensorKind)] = &[
    ("general", TensorKind::General),
    ("default", TensorKind::General),
    ("other", TensorKind::General),
    ("attention", TensorKind::Attention),
    ("attention_weights", TensorKind::Attention),
    ("attention_scores", TensorKind::Attention),
    ("attn", TensorKind::Attention),
    ("kv_cache", TensorKind::KvCache),
    ("kvcache", TensorKind::KvCache),
    ("kv", TensorKind::KvCache),
    ("key_value_cache", TensorKind::KvCache),
    ("image_embedding", TensorKind::ImageEmbedding),
    ("image_embeddings", TensorKind::ImageEmbedding),
    ("image_features", TensorKind::ImageEmbedding),
    ("vision", TensorKind::ImageEmbedding),
    ("text_embedding", TensorKind::TextEmbedding),
    ("text_embeddings", TensorKind::TextEmbedding),
    ("text_features", TensorKind::TextEmbedding),
    ("embedding", TensorKind::TextEmbedding),
    ("activation", TensorKind::Activation),
    ("activations", TensorKind::Activation),
    ("intermediate", TensorKind::Activation),
    ("intermediate_activation", TensorKind::Activation),
    ("intermediate_activations", TensorKind::Activation),
    ("mlp", TensorKind::Activation),
];

/// Error for a string that names no tensor kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseKindError {
    input: String,
}

impl fmt::Display for ParseKindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown tensor kind {:?}; accepted: ", self.input)?;
        for (i, (name, _)) in SPELLINGS.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseKindError {}

impl FromStr for TensorKind {
    type Err = ParseKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let eq = |name: &str| {
            name.len() == t.len()
                && name.bytes().zip(t.bytes()).all(|(a, b)| {
                    let b = b.to_ascii_lowercase();
                    a == b || (a == b'_' && (b == b'-' || b == b' '))
                })
        };
        SPELLINGS
            .iter()
            .find(|(name, _)| eq(name))
            .map(|&(_, k)| k)
            .ok_or_else(|| ParseKindError {
                input: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_spellings_parse() {
        for k in TensorKind::ALL {
            assert_eq!(k.name().parse::<TensorKind>().unwrap(), k);
            assert_eq!(TensorKind::from_index(k.index()), Some(k));
        }
        assert_eq!(
            "Attention-Weights".parse::<TensorKind>().unwrap(),
            TensorKind::Attention
        );
        assert_eq!(
            " KV cache ".parse::<TensorKind>().unwrap(),
            TensorKind::KvCache
        );
        assert_eq!(
            "image_features".parse::<TensorKind>().unwrap(),
            TensorKind::ImageEmbedding
        );
        assert_eq!(
            "intermediate".parse::<TensorKind>().unwrap(),
            TensorKind::Activation
        );
        let e = "weights".parse::<TensorKind>().unwrap_err().to_string();
        assert!(
            e.contains("\"weights\"") && e.contains("kv_cache") && e.contains("attention"),
            "{e}"
        );
    }
}
