//! The unpickler on hand-made pickles: basics, refused globals, checked lengths.

use super::*;
use crate::checkpoint::pickle;

#[test]
fn pickle_basics() {
    // {'a': [1, 2.5, 'x'], 3: (True, None)} at protocol 2, written by CPython.
    let p: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01\
        G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03eK\x03\x88N\x86q\x04u.";
    let l = pickle::load(p).unwrap();
    assert_eq!(l.consumed, p.len());
    let Value::Dict(d) = &l.value else { panic!() };
    let d = d.borrow();
    assert_eq!(d.entries.len(), 2);
    let Some(Value::List(a)) = d.get("a") else {
        panic!()
    };
    assert_eq!(a.borrow().len(), 3);
    assert_eq!(d.entries[1].0, pickle::Key::Int(3));
    for n in 0..p.len() {
        assert!(pickle::load(&p[..n]).is_err(), "prefix {n}");
    }
}

#[test]
fn globals_outside_the_allowlist_are_refused() {
    for (p, name) in [
        // GLOBAL + REDUCE: os.system('id').
        (
            &b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R."[..],
            "os.system",
        ),
        // STACK_GLOBAL (protocol 4).
        (b"\x80\x04\x8c\x02os\x8c\x06system\x93.", "os.system"),
        // INST.
        (b"\x80\x02(X\x02\x00\x00\x00idios\nsystem\n.", "os.system"),
        (b"\x80\x02c__builtin__\neval\n.", "builtins.eval"),
        (b"\x80\x02ctorch\nload\n.", "torch.load"),
        (b"\x80\x02csubprocess\nPopen\n.", "subprocess.Popen"),
    ] {
        let err = pickle::load(p).err().expect("refused");
        assert!(
            err.contains(&format!("`{name}`")) && err.contains("not a plain weights file"),
            "{err}"
        );
    }
    // What torch and the training scripts write is allowed.
    for p in [
        &b"\x80\x02ccollections\nOrderedDict\n)R."[..],
        b"\x80\x02c__builtin__\nset\n]\x85R.",
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n.",
        b"\x80\x02ctorch\nbfloat16\n.",
        b"\x80\x02cargparse\nNamespace\n)\x81}b.",
        b"\x80\x02cpathlib\nPurePosixPath\nX\x01\x00\x00\x00r\x85R.",
    ] {
        assert!(pickle::load(p).is_ok(), "{p:?}");
    }
}

#[test]
fn declared_lengths_and_memo_indices_are_checked() {
    for p in [
        &b"\x80\x02X\xff\xff\xff\xffabc."[..],
        b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7fabc.",
        b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xffabc.",
        b"\x80\x02B\xff\xff\xff\x7fabc.",
        b"\x80\x02\x8b\xff\xff\xff\x7f\x01.",
        b"\x80\x02h\x07.",
        b"\x80\x02j\xff\xff\xff\xff.",
        b"\x80\x02g18446744073709551615\n.",
    ] {
        let err = pickle::load(p).err().expect("an error");
        assert!(
            err.contains("ends early") || err.contains("memo entry"),
            "{err}"
        );
    }
    // A huge memo index costs nothing: the memo is a map.
    let l = pickle::load(b"\x80\x02Nr\xff\xff\xff\xff0j\xff\xff\xff\xff.").unwrap();
    assert!(matches!(l.value, Value::None));
}
