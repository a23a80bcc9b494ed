//! A safe subset of Python's unpickler, enough for `torch.save` files.
//!
//! Nothing is ever imported or called: `GLOBAL`s are names, checked against
//! [`ALLOWED_GLOBALS`](allowlist::ALLOWED_GLOBALS) (any other is an error, as in
//! `torch.load(weights_only=True)`), and `REDUCE`/`NEWOBJ`/`BUILD` produce values only for the handful of callables torch uses for
//! tensors and ordered dicts; every other allowed class becomes an opaque [`Value::Object`].
//! Containers are shared (`Rc`), so memo references see later mutations, as in Python.
//!
//! Hostile input: lengths are checked against the remaining input before anything is copied,
//! the memo is a map (a huge index costs nothing), the number of opcodes is bounded
//! ([`MAX_OPS`]), and values are dropped iteratively, so arbitrarily deep nesting cannot overflow
//! the stack.
//!
//! Hand-written because burn-store's pickle reader ignores strides (views would load wrong).

use std::collections::HashMap;
use std::rc::Rc;

use super::elem::{torch_storage_elem_size, Elem};

mod allowlist;
#[cfg(test)]
mod tests;
mod value;

use allowlist::allowed_global;
pub use value::{Dict, Key, Object, Storage, TensorRef, Value};

/// The most opcodes one pickle may run (a weights file's pickle runs a few dozen per
/// tensor); bounds the memory a crafted pickle can make the interpreter hold.
pub const MAX_OPS: usize = 1 << 24;

/// How deep `_rebuild_from_type_v2` may nest (torch writes one level).
const MAX_CALL_DEPTH: usize = 8;

/// The result of reading one pickle.
pub struct Loaded {
    pub value: Value,
    /// Bytes consumed, up to and including STOP.
    pub consumed: usize,
    /// Every storage met in a persistent id, by key.
    pub storages: HashMap<String, Rc<Storage>>,
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    storages: HashMap<String, Rc<Storage>>,
}

type R<T> = Result<T, String>;

/// Reads one pickle from the start of `data`.
pub fn load(data: &[u8]) -> Result<Loaded, String> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        storages: HashMap::new(),
    };
    let value = m.run()?;
    Ok(Loaded {
        value,
        consumed: m.pos,
        storages: m.storages,
    })
}

fn tensor_bad(reason: impl Into<String>) -> Value {
    Value::Bad(Rc::from(reason.into().as_str()))
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "pickle ends early (needs {n} bytes at offset {}, has {})",
                    self.pos,
                    self.data.len() - self.pos
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> R<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> R<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn line(&mut self) -> R<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("pickle ends inside a text line at offset {}", self.pos))?;
        let l = &rest[..n];
        self.pos += n + 1;
        Ok(l.strip_suffix(b"\r").unwrap_or(l))
    }

    fn line_str(&mut self) -> R<String> {
        let l = self.line()?;
        String::from_utf8(l.to_vec())
            .map_err(|_| format!("non-UTF-8 text before offset {}", self.pos))
    }

    fn pop(&mut self) -> R<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(format!("pickle stack underflow at offset {}", self.pos));
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&self) -> R<&Value> {
        self.stack
            .last()
            .ok_or_else(|| format!("pickle stack empty at offset {}", self.pos))
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| format!("pickle MARK missing at offset {}", self.pos))?;
        if m > self.stack.len() {
            return Err(format!(
                "pickle MARK beyond the stack at offset {}",
                self.pos
            ));
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_get(&self, i: u64) -> R<Value> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| format!("pickle memo entry {i} missing at offset {}", self.pos))
    }

    fn memo_put(&mut self, i: u64) -> R<()> {
        let v = self.top()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }

    fn push_str(&mut self, b: &[u8]) -> R<()> {
        let s = std::str::from_utf8(b)
            .map_err(|_| format!("invalid UTF-8 string before offset {}", self.pos))?;
        self.stack.push(Value::Str(Rc::from(s)));
        Ok(())
    }

    fn long_le(b: &[u8]) -> Value {
        if b.is_empty() {
            return Value::Int(0);
        }
        if b.len() > 8 {
            return Value::BigInt;
        }
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
        a[..b.len()].copy_from_slice(b);
        Value::Int(i64::from_le_bytes(a))
    }

    fn set_items(&mut self, target: &Value, items: Vec<Value>) -> R<()> {
        if !items.len().is_multiple_of(2) {
            return Err(format!("odd number of dict items at offset {}", self.pos));
        }
        if let Value::Dict(d) = target {
            let mut d = d.borrow_mut();
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                d.insert(k.key(), v);
            }
        }
        // Items set on an opaque object (a dict subclass we do not know) are dropped.
        Ok(())
    }

    fn run(&mut self) -> R<Value> {
        for _ in 0..MAX_OPS {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(format!("unsupported pickle protocol {v}"));
                    }
                }
                0x95 => {
                    // FRAME: framing is only a hint for buffered readers.
                    self.take(8)?;
                }
                b'.' => {
                    // STOP
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'I' => {
                    let l = self.line_str()?;
                    let v = match l.as_str() {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => Value::Int(
                            s.parse()
                                .map_err(|_| format!("bad INT '{s}' at offset {at}"))?,
                        ),
                    };
                    self.stack.push(v);
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'L' => {
                    let l = self.line_str()?;
                    let s = l.trim_end_matches('L');
                    self.stack
                        .push(s.parse().map(Value::Int).unwrap_or(Value::BigInt));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.stack.push(Self::long_le(b));
                }
                0x8b => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    self.stack.push(Self::long_le(b));
                }
                b'F' => {
                    let l = self.line_str()?;
                    let f = l
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad FLOAT '{l}' at offset {at}"))?;
                    self.stack.push(Value::Float(f));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let f = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(f));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    self.push_str(b)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.push_str(b)?;
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).unwrap_or(usize::MAX);
                    let b = self.take(n)?;
                    self.push_str(b)?;
                }
                b'T' | b'U' => {
                    // BINSTRING / SHORT_BINSTRING: Python 2 str, read as Latin-1.
                    let n = if op == b'T' {
                        self.u32()? as usize
                    } else {
                        self.u8()? as usize
                    };
                    let b = self.take(n)?;
                    let s: String = b.iter().map(|&c| c as char).collect();
                    self.stack.push(Value::Str(Rc::from(s.as_str())));
                }
                b'S' => {
                    // STRING: a quoted repr; escapes are kept verbatim.
                    let l = self.line_str()?;
                    let s = l.trim();
                    let s = if s.len() >= 2
                        && (s.starts_with('\'') || s.starts_with('"'))
                        && s.ends_with(&s[..1])
                    {
                        &s[1..s.len() - 1]
                    } else {
                        s
                    };
                    self.stack.push(Value::Str(Rc::from(s)));
                }
                b'V' => {
                    let l = self.line()?;
                    let s = String::from_utf8_lossy(l).into_owned();
                    self.stack.push(Value::Str(Rc::from(s.as_str())));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => usize::try_from(self.u64()?).unwrap_or(usize::MAX),
                    };
                    self.take(n)?;
                    self.stack.push(Value::Bytes);
                }
                b']' => self.stack.push(Value::List(Rc::default())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(items.into())));
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().push(v);
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().extend(items);
                    }
                }
                b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return Err(format!("pickle stack underflow at offset {at}"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                b'}' => self.stack.push(Value::Dict(Rc::default())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = Value::Dict(Rc::default());
                    self.set_items(&d, items)?;
                    self.stack.push(d);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, items)?;
                }
                0x8f => self.stack.push(Value::List(Rc::default())), // EMPTY_SET
                0x90 => {
                    // ADDITEMS
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().extend(items);
                    }
                }
                0x91 => {
                    // FROZENSET
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(items.into())));
                }
                b'c' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let g = allowed_global(&module, &name, at)?;
                    self.stack.push(Value::Global(Rc::new(g)));
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = allowed_global(m, n, at)?;
                            self.stack.push(Value::Global(Rc::new(g)));
                        }
                        _ => return Err(format!("STACK_GLOBAL without names at offset {at}")),
                    }
                }
                b'i' => {
                    // INST module\nname\n with args on the stack after MARK.
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let g = allowed_global(&module, &name, at)?;
                    let args = self.pop_mark()?;
                    let cls = Value::Global(Rc::new(g));
                    let v = self.call(cls, Value::Tuple(Rc::new(args)), 0);
                    self.stack.push(v);
                }
                b'o' => {
                    // OBJ: MARK cls args... OBJ
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(format!("OBJ without a class at offset {at}"));
                    }
                    let cls = items.remove(0);
                    let v = self.call(cls, Value::Tuple(Rc::new(items)), 0);
                    self.stack.push(v);
                }
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args, 0);
                    self.stack.push(v);
                }
                0x92 => {
                    // NEWOBJ_EX
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args, 0);
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: set state on an instance. Instances are opaque and an
                    // OrderedDict's state is its attributes, not items: nothing to do.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid);
                    self.stack.push(v);
                }
                b'P' => {
                    let pid = self.line_str()?;
                    self.stack.push(Value::Object(Rc::new(Object {
                        class: format!("persistent id {pid}"),
                    })));
                }
                b'p' => {
                    let l = self.line_str()?;
                    let i = l
                        .parse()
                        .map_err(|_| format!("bad PUT index at offset {at}"))?;
                    self.memo_put(i)?;
                }
                b'q' => {
                    let i = self.u8()? as u64;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()? as u64;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?;
                }
                b'g' => {
                    let l = self.line_str()?;
                    let i = l
                        .parse()
                        .map_err(|_| format!("bad GET index at offset {at}"))?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'h' => {
                    let i = self.u8()? as u64;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let i = self.u32()? as u64;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                0x82..=0x84 => {
                    return Err(format!(
                        "pickle uses the copyreg extension registry (opcode 0x{op:02x} at \
                         offset {at}), which torch never writes"
                    ))
                }
                0x97 | 0x98 => {
                    return Err(format!(
                        "pickle uses out-of-band buffers (opcode 0x{op:02x} at offset {at})"
                    ))
                }
                _ => {
                    return Err(format!(
                        "invalid pickle opcode 0x{op:02x} at offset {at} (not a torch file, \
                         or corrupt)"
                    ))
                }
            }
        }
        Err(format!(
            "the pickle runs more than {MAX_OPS} opcodes (a weights file's runs a few dozen \
             per tensor): not a weights file"
        ))
    }

    /// `pid` from a BINPERSID: torch's `('storage', cls, key, location, numel[, view])`.
    fn persistent_load(&mut self, pid: Value) -> Value {
        let Value::Tuple(t) = &pid else {
            return Value::Object(Rc::new(Object {
                class: format!("persistent id ({})", pid.type_name()),
            }));
        };
        let is_storage = matches!(t.first(), Some(Value::Str(s)) if &**s == "storage");
        if !is_storage || t.len() < 3 {
            return Value::Object(Rc::new(Object {
                class: "persistent object".into(),
            }));
        }
        let class = match &t[1] {
            Value::Global(g) => g.1.clone(),
            Value::Str(s) => s.to_string(),
            other => format!("<{}>", other.type_name()),
        };
        let key = match &t[2] {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            other => return tensor_bad(format!("storage key is a {}", other.type_name())),
        };
        let numel = t.get(4).and_then(Value::as_usize);
        let view_offset = match t.get(5) {
            Some(Value::Tuple(v)) if v.len() >= 2 => v[1].as_usize().unwrap_or(0),
            _ => 0,
        };
        let root = self
            .storages
            .entry(key.clone())
            .or_insert_with(|| {
                Rc::new(Storage {
                    key: key.clone(),
                    class: class.clone(),
                    elem: Elem::from_torch_storage(&class),
                    elem_size: torch_storage_elem_size(&class),
                    numel,
                    view_offset: 0,
                })
            })
            .clone();
        if view_offset == 0 {
            Value::Storage(root)
        } else {
            Value::Storage(Rc::new(Storage {
                key: root.key.clone(),
                class: root.class.clone(),
                elem: root.elem,
                elem_size: root.elem_size,
                numel: root.numel,
                view_offset,
            }))
        }
    }

    /// Applies a callable from REDUCE / NEWOBJ / INST / OBJ; `depth` counts nested
    /// `_rebuild_from_type_v2` applications.
    fn call(&mut self, f: Value, args: Value, depth: usize) -> Value {
        let Value::Global(g) = &f else {
            return Value::Object(Rc::new(Object {
                class: format!("result of calling a {}", f.type_name()),
            }));
        };
        let (module, name) = (g.0.as_str(), g.1.as_str());
        let argv: Vec<Value> = match &args {
            Value::Tuple(t) => t.to_vec(),
            Value::List(l) => l.borrow().clone(),
            _ => Vec::new(),
        };
        match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                rebuild_tensor(&argv, None)
            }
            ("torch._utils", "_rebuild_tensor_v3") => {
                let dtype = match argv.get(6) {
                    Some(Value::Global(g)) => g.1.clone(),
                    Some(Value::Str(s)) => s.to_string(),
                    _ => return tensor_bad("_rebuild_tensor_v3 without a dtype"),
                };
                rebuild_tensor(&argv, Some(dtype))
            }
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter")
            | ("torch._utils", "_rebuild_buffer") => argv
                .into_iter()
                .next()
                .unwrap_or_else(|| tensor_bad("parameter without data")),
            ("torch._tensor", "_rebuild_from_type_v2")
            | ("torch._tensor", "_rebuild_from_type") => {
                // (func, new_type, args, state): apply func to args.
                match (argv.first(), argv.get(2)) {
                    _ if depth >= MAX_CALL_DEPTH => {
                        tensor_bad("_rebuild_from_type_v2 nests too deeply")
                    }
                    (Some(func), Some(inner)) => self.call(func.clone(), inner.clone(), depth + 1),
                    _ => tensor_bad("_rebuild_from_type_v2 with too few arguments"),
                }
            }
            ("collections", "OrderedDict") | ("builtins", "dict") => {
                let d = Value::Dict(Rc::default());
                if let Some(Value::List(items)) = argv.first() {
                    if let Value::Dict(dd) = &d {
                        let mut dd = dd.borrow_mut();
                        for item in items.borrow().iter() {
                            if let Value::Tuple(kv) = item {
                                if kv.len() == 2 {
                                    dd.insert(kv[0].key(), kv[1].clone());
                                }
                            }
                        }
                    }
                }
                d
            }
            ("torch._utils", n) if n.starts_with("_rebuild") => tensor_bad(format!(
                "tensor kind torch._utils.{n} (sparse, quantized, nested or meta tensor) is \
                 not supported"
            )),
            _ => Value::Object(Rc::new(Object {
                class: format!("{module}.{name}"),
            })),
        }
    }
}

/// `_rebuild_tensor[_v2|_v3](storage, offset, size, stride, ...)`.
fn rebuild_tensor(argv: &[Value], dtype: Option<String>) -> Value {
    let storage = match argv.first() {
        Some(Value::Storage(s)) => s.clone(),
        Some(Value::Bad(b)) => return Value::Bad(b.clone()),
        Some(other) => {
            return tensor_bad(format!(
                "tensor storage is a {} (not a torch.save storage)",
                other.type_name()
            ))
        }
        None => return tensor_bad("tensor without a storage"),
    };
    let Some(offset) = argv.get(1).and_then(Value::as_usize) else {
        return tensor_bad("tensor storage offset is not a non-negative int");
    };
    let Some(shape) = argv.get(2).and_then(Value::as_usize_tuple) else {
        return tensor_bad("tensor size is not a tuple of non-negative ints");
    };
    let stride = match argv.get(3) {
        None | Some(Value::None) => contiguous_strides(&shape),
        Some(v) => match v.as_usize_tuple() {
            Some(s) => s,
            None => return tensor_bad("tensor stride is not a tuple of non-negative ints"),
        },
    };
    if stride.len() != shape.len() {
        return tensor_bad(format!(
            "tensor size {shape:?} and stride {stride:?} differ in rank"
        ));
    }
    let (elem, dtype_name) = match dtype {
        None => (storage.elem, storage.class.clone()),
        Some(d) => {
            // v3: an untyped (byte) storage reinterpreted as `d`; offsets count elements of d.
            if storage.elem_size != Some(1) {
                return tensor_bad(format!(
                    "_rebuild_tensor_v3 on a {} (expected UntypedStorage)",
                    storage.class
                ));
            }
            (Elem::from_torch_dtype(&d), d)
        }
    };
    Value::Tensor(Rc::new(TensorRef {
        storage,
        elem,
        dtype_name,
        offset,
        shape,
        stride,
    }))
}

pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].saturating_mul(shape[i + 1]);
    }
    s
}
