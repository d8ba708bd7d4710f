//! Conversions between the wire's raw tensors and the model runtime's inputs and outputs,
//! and the response frames of `/shoal/activation/1`.
//!
//! A request on `/shoal/activation/1` is answered by the stage with one of: the signed
//! [`TokenReturn`] of the last stage (relayed unchanged back along the pipeline, so the origin
//! checks the last stage's signature), an [`ErrorReply`] saying which stage failed and why,
//! or (for a [`shoal_protocol::SessionEnd`]) an empty acknowledgement.

use shoal_model::StageInput;
use shoal_protocol::{
    DType, ErrorCode, ErrorReply, Kind, PipelineMessage, Signed, Tensor, TokenReturn, decode,
    encode, peek,
};

use super::ordering::Refusal;

/// The prompt or a decoded token as the first stage takes it: `i64` ids `[1, S]`.
pub fn tokens_tensor(ids: &[u32]) -> Tensor {
    Tensor {
        dtype: DType::I64,
        shape: vec![1, u32::try_from(ids.len()).unwrap_or(u32::MAX)],
        data: ids
            .iter()
            .flat_map(|&t| i64::from(t).to_le_bytes())
            .collect(),
    }
}

/// A float activation of the runtime as a wire tensor.
pub fn float_tensor(a: &shoal_model::Activation) -> Tensor {
    Tensor {
        dtype: DType::F32,
        shape: a
            .shape
            .iter()
            .map(|&d| u32::try_from(d).unwrap_or(u32::MAX))
            .collect(),
        data: a.to_le_bytes(),
    }
}

/// The runtime input carried by `t`: token ids into the first stage (`first`), hidden states
/// `[1, S, H]` otherwise. Anything else is [`Refusal::Malformed`].
pub fn stage_input(t: &Tensor, first: bool) -> Result<StageInput, Refusal> {
    match (first, t.dtype, t.shape.as_slice()) {
        (true, DType::I64, [1, s]) if *s > 0 => t
            .data
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u32::try_from(i64::from_le_bytes(b)).map_err(|_| Refusal::Malformed)
            })
            .collect::<Result<Vec<u32>, _>>()
            .map(StageInput::Tokens),
        (false, DType::F32, [1, s, h]) if *s > 0 && *h > 0 => {
            let shape = t.shape.iter().map(|&d| d as usize).collect();
            shoal_model::Activation::from_le_bytes(shape, &t.data)
                .map(StageInput::Hidden)
                .map_err(|_| Refusal::Malformed)
        }
        _ => Err(Refusal::Malformed),
    }
}

/// Sequence length of a stage input.
pub fn input_len(input: &StageInput) -> usize {
    match input {
        StageInput::Tokens(t) => t.len(),
        StageInput::Hidden(a) => a.shape.get(1).copied().unwrap_or(0),
    }
}

/// The rows of a `[.., S, V]` f32 logits tensor, one per position (a speculative step's
/// verified positions); `None` when it is not one.
pub fn logits_rows(t: &Tensor) -> Option<Vec<Vec<f32>>> {
    if t.dtype != DType::F32 {
        return None;
    }
    let v = *t.shape.last()? as usize;
    if v == 0 || !t.data.len().is_multiple_of(4 * v) || t.data.is_empty() {
        return None;
    }
    Some(
        t.data
            .chunks_exact(4 * v)
            .map(|row| {
                row.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            })
            .collect(),
    )
}

/// An encoded [`ErrorReply`] (falls back to an empty frame if encoding fails, which the
/// requester reads as a failure too).
pub fn error_frame(session: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Vec<u8> {
    let mut message: String = message.into();
    if message.len() > shoal_protocol::MAX_ERROR_MESSAGE {
        let mut cut = shoal_protocol::MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    encode(&ErrorReply {
        session,
        code,
        message,
    })
    .unwrap_or_default()
}

/// What a stage answered.
#[derive(Debug)]
pub enum Reply {
    /// The last stage's token or logits (signature verified, signer not yet checked).
    Token(Signed<TokenReturn>),
    /// A stage failed or refused.
    Error(ErrorReply),
    /// An acknowledgement without content.
    Ack,
}

/// Decodes a response frame of `/shoal/activation/1`.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, shoal_protocol::ProtocolError> {
    if bytes.is_empty() {
        return Ok(Reply::Ack);
    }
    match peek(bytes)?.kind {
        Kind::ErrorReply => decode::<ErrorReply>(bytes).map(Reply::Error),
        _ => match PipelineMessage::decode(bytes)? {
            PipelineMessage::Token(t) => Ok(Reply::Token(t)),
            _ => Err(shoal_protocol::ProtocolError::WrongKind {
                expected: Kind::TokenReturn,
                expected_signed: true,
                found: Kind::Activation,
                found_signed: true,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_round_trip_into_stage_input() {
        let t = tokens_tensor(&[1, 2, 300]);
        assert_eq!(
            stage_input(&t, true),
            Ok(StageInput::Tokens(vec![1, 2, 300]))
        );
        assert_eq!(stage_input(&t, false), Err(Refusal::Malformed));
    }

    #[test]
    fn hidden_states_round_trip_and_bad_shapes_are_refused() {
        let a = shoal_model::Activation::new(vec![1, 2, 3], (0..6).map(|x| x as f32).collect())
            .unwrap();
        let t = float_tensor(&a);
        assert_eq!(stage_input(&t, false), Ok(StageInput::Hidden(a)));
        assert_eq!(stage_input(&t, true), Err(Refusal::Malformed));
        let mut flat = t.clone();
        flat.shape = vec![6];
        assert_eq!(stage_input(&flat, false), Err(Refusal::Malformed));
        let mut negative = tokens_tensor(&[1]);
        negative.data = (-1i64).to_le_bytes().to_vec();
        assert_eq!(stage_input(&negative, true), Err(Refusal::Malformed));
    }

    #[test]
    fn logits_rows_split_positions() {
        let a = shoal_model::Activation::new(vec![1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(
            logits_rows(&float_tensor(&a)),
            Some(vec![vec![1.0, 2.0], vec![3.0, 4.0]])
        );
        let mut bad = float_tensor(&a);
        bad.data.pop();
        assert_eq!(logits_rows(&bad), None);
    }

    #[test]
    fn error_frames_decode_as_errors() {
        let f = error_frame(Some(3), ErrorCode::StageFailed, "x".repeat(5000));
        match decode_reply(&f).unwrap() {
            Reply::Error(e) => {
                assert_eq!(e.code, ErrorCode::StageFailed);
                assert_eq!(e.session, Some(3));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode_reply(&[]).unwrap(), Reply::Ack));
        assert!(decode_reply(&[1, 2, 3]).is_err());
    }
}
