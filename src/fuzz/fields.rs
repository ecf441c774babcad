//! Field-level edits of protobuf encodings, for the fuzz harness: the bytes are parsed
//! into a tree of fields (a length-delimited value that parses as a message is one),
//! one field anywhere in the tree is changed, and the tree is encoded again with every
//! enclosing length prefix right, so the edit reaches nested decoders.

use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};

/// Deepest nesting parsed as messages.
const MAX_DEPTH: usize = 6;

/// How one field is changed.
#[derive(Clone, Debug)]
pub(crate) enum FieldEdit {
    /// Inserts copies of the field with an empty (zero) value after it: a repeated
    /// field made dense, each entry costing two bytes on the wire.
    Empties(u16),
    /// Inserts copies of the whole field after it.
    Copies(u16),
    /// Removes the field.
    Drop,
    /// Replaces a varint's value, or a length-delimited value's bytes by this many zeros.
    Value(u64),
}

#[derive(Clone, Debug)]
enum Value {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(Vec<u8>),
    Message(Vec<Field>),
}

#[derive(Clone, Debug)]
struct Field {
    number: u32,
    value: Value,
}

fn parse(mut buf: &[u8], depth: usize) -> Option<Vec<Field>> {
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let (number, wire) = decode_key(&mut buf).ok()?;
        let value = match wire {
            WireType::Varint => Value::Varint(decode_varint(&mut buf).ok()?),
            WireType::SixtyFourBit => Value::Fixed64(take(&mut buf, 8)?.try_into().ok()?),
            WireType::ThirtyTwoBit => Value::Fixed32(take(&mut buf, 4)?.try_into().ok()?),
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let inner = take(&mut buf, len)?;
                match (depth < MAX_DEPTH && !inner.is_empty())
                    .then(|| parse(inner, depth + 1))
                    .flatten()
                {
                    Some(children) => Value::Message(children),
                    None => Value::Bytes(inner.to_vec()),
                }
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        fields.push(Field { number, value });
    }
    Some(fields)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = (buf.get(..n)?, buf.get(n..)?);
    *buf = rest;
    Some(head)
}

fn encode(fields: &[Field], out: &mut Vec<u8>) {
    for f in fields {
        match &f.value {
            Value::Varint(v) => {
                encode_key(f.number, WireType::Varint, out);
                encode_varint(*v, out);
            }
            Value::Fixed64(b) => {
                encode_key(f.number, WireType::SixtyFourBit, out);
                out.extend_from_slice(b);
            }
            Value::Fixed32(b) => {
                encode_key(f.number, WireType::ThirtyTwoBit, out);
                out.extend_from_slice(b);
            }
            Value::Bytes(b) => {
                encode_key(f.number, WireType::LengthDelimited, out);
                encode_varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
            Value::Message(children) => {
                let mut inner = Vec::new();
                encode(children, &mut inner);
                encode_key(f.number, WireType::LengthDelimited, out);
                encode_varint(inner.len() as u64, out);
                out.extend(inner);
            }
        }
    }
}

fn count(fields: &[Field]) -> usize {
    fields
        .iter()
        .map(|f| match &f.value {
            Value::Message(children) => 1 + count(children),
            _ => 1,
        })
        .sum()
}

/// Applies `edit` to the `n`th field in depth-first order; false if there are fewer.
fn edit_nth(fields: &mut Vec<Field>, n: &mut usize, edit: &FieldEdit) -> bool {
    for i in 0..fields.len() {
        if *n == 0 {
            apply(fields, i, edit);
            return true;
        }
        *n -= 1;
        if let Value::Message(children) = &mut fields[i].value {
            if edit_nth(children, n, edit) {
                return true;
            }
        }
    }
    false
}

fn apply(fields: &mut Vec<Field>, i: usize, edit: &FieldEdit) {
    let empty = |f: &Field| Field {
        number: f.number,
        value: match f.value {
            Value::Varint(_) => Value::Varint(0),
            Value::Fixed64(_) => Value::Fixed64([0; 8]),
            Value::Fixed32(_) => Value::Fixed32([0; 4]),
            Value::Bytes(_) | Value::Message(_) => Value::Bytes(Vec::new()),
        },
    };
    match edit {
        FieldEdit::Empties(n) => {
            let copies = vec![empty(&fields[i]); usize::from(*n)];
            fields.splice(i + 1..i + 1, copies);
        }
        FieldEdit::Copies(n) => {
            let copies = vec![fields[i].clone(); usize::from(*n)];
            fields.splice(i + 1..i + 1, copies);
        }
        FieldEdit::Drop => {
            fields.remove(i);
        }
        FieldEdit::Value(v) => {
            fields[i].value = match fields[i].value {
                Value::Varint(_) => Value::Varint(*v),
                Value::Bytes(_) | Value::Message(_) => Value::Bytes(vec![0; (*v % 4096) as usize]),
                ref fixed => fixed.clone(),
            }
        }
    }
}

/// `bytes` with `edit` applied to the field at fraction `at` of the depth-first field
/// list; unchanged if they do not parse as a protobuf message.
pub(crate) fn edit_field(bytes: Vec<u8>, at: proptest::sample::Index, edit: &FieldEdit) -> Vec<u8> {
    let Some(mut fields) = parse(&bytes, 0) else {
        return bytes;
    };
    let total = count(&fields);
    if total == 0 {
        return bytes;
    }
    let mut n = at.index(total);
    edit_nth(&mut fields, &mut n, edit);
    let mut out = Vec::with_capacity(bytes.len());
    encode(&fields, &mut out);
    out
}
