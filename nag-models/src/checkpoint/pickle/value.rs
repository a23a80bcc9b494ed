//! The values the unpickler builds: Python containers (shared, as in Python), torch storages and
//! tensor views, and opaque objects; dropped without recursion.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::checkpoint::elem::Elem;

/// A storage named by a persistent id.
#[derive(Debug)]
pub struct Storage {
    /// Storage key: the entry `data/<key>` of a zip file, or the legacy root key.
    pub key: String,
    /// The storage class name (`FloatStorage`, ...).
    pub class: String,
    /// Its element type, if convertible.
    pub elem: Option<Elem>,
    /// Element size in bytes, if known.
    pub elem_size: Option<usize>,
    /// Number of elements the persistent id declares.
    pub numel: Option<usize>,
    /// Offset (elements) of a legacy storage view into its root storage.
    pub view_offset: usize,
}

/// A tensor: a strided view of a storage.
#[derive(Debug)]
pub struct TensorRef {
    pub storage: Rc<Storage>,
    /// Element type of the tensor (the storage's, or the dtype given to `_rebuild_tensor_v3`).
    pub elem: Option<Elem>,
    pub dtype_name: String,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A dictionary key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Str(String),
    Int(i64),
    Other(String),
}

impl Key {
    pub fn text(&self) -> String {
        match self {
            Key::Str(s) => s.clone(),
            Key::Int(i) => i.to_string(),
            Key::Other(s) => s.clone(),
        }
    }
}

/// An insertion-ordered dict.
#[derive(Debug, Default)]
pub struct Dict {
    pub entries: Vec<(Key, Value)>,
    index: HashMap<Key, usize>,
}

impl Dict {
    pub fn insert(&mut self, k: Key, v: Value) {
        if let Some(&i) = self.index.get(&k) {
            self.entries[i].1 = v;
        } else {
            self.index.insert(k.clone(), self.entries.len());
            self.entries.push((k, v));
        }
    }

    pub fn get(&self, k: &str) -> Option<&Value> {
        self.index
            .get(&Key::Str(k.to_string()))
            .map(|&i| &self.entries[i].1)
    }
}

/// An opaque instance of a class we do not interpret.
#[derive(Debug)]
pub struct Object {
    pub class: String,
}

#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    BigInt,
    Float(f64),
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Dict>>),
    Global(Rc<(String, String)>),
    Object(Rc<Object>),
    Storage(Rc<Storage>),
    Tensor(Rc<TensorRef>),
    /// Something tensor-like that could not be understood; the reason is reported if it is
    /// ever needed.
    Bad(Rc<str>),
}

impl Drop for Value {
    /// Dismantles uniquely owned containers with an explicit work list: the default drop
    /// recurses once per nesting level, so a pickle of 100 000 nested lists (200 kB) would
    /// overflow the stack.
    fn drop(&mut self) {
        let mut pending = Vec::new();
        self.take_children(&mut pending);
        while let Some(mut v) = pending.pop() {
            v.take_children(&mut pending);
        }
    }
}

impl Value {
    /// Moves the children of a container this value alone owns into `out`.
    fn take_children(&mut self, out: &mut Vec<Value>) {
        match self {
            Value::Tuple(t) => {
                if let Some(items) = Rc::get_mut(t) {
                    out.append(items);
                }
            }
            Value::List(l) => {
                if let Some(items) = Rc::get_mut(l) {
                    out.append(items.get_mut());
                }
            }
            Value::Dict(d) => {
                if let Some(d) = Rc::get_mut(d) {
                    let d = d.get_mut();
                    d.index.clear();
                    out.extend(d.entries.drain(..).map(|(_, v)| v));
                }
            }
            _ => {}
        }
    }

    pub fn type_name(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) | Value::BigInt => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes => "bytes".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Global(g) => format!("class {}.{}", g.0, g.1),
            Value::Object(o) => format!("instance of {}", o.class),
            Value::Storage(_) => "storage".into(),
            Value::Tensor(_) => "tensor".into(),
            Value::Bad(_) => "tensor (unreadable)".into(),
        }
    }

    pub(super) fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) if *i >= 0 => Some(*i as usize),
            _ => None,
        }
    }

    pub(super) fn as_usize_tuple(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(t) => t.iter().map(Value::as_usize).collect(),
            Value::List(l) => l.borrow().iter().map(Value::as_usize).collect(),
            _ => None,
        }
    }

    pub(super) fn key(&self) -> Key {
        match self {
            Value::Str(s) => Key::Str(s.to_string()),
            Value::Int(i) => Key::Int(*i),
            Value::Bool(b) => Key::Int(*b as i64),
            Value::Float(f) => Key::Other(f.to_string()),
            other => Key::Other(format!("<{}>", other.type_name())),
        }
    }
}
