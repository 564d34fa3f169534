//! The wire constants on `deadpool._core`, so that Python imports them
//! rather than copying them (wire/mod.rs lists what each is).

use crate::wire::dispatch::{CancelReply, EventKind, SubmitReply};
use crate::wire::frame::Tag;
use crate::wire::request::{RELEASE_SPARE, WORKER_REQUEST, WORKER_REQUEST_FDS};
use crate::wire::status::StatusKind;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pub fn export(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for &tag in Tag::ALL {
        m.add(format!("TAG_{}", tag.python_name()), tag as u8)?;
    }
    for &kind in StatusKind::ALL {
        m.add(format!("STATUS_{}", kind.python_name()), kind as u32)?;
    }
    for &kind in EventKind::ALL {
        m.add(format!("EVENT_{}", kind.python_name()), kind as u8)?;
    }
    for &reply in CancelReply::ALL {
        m.add(format!("CANCEL_{}", reply.python_name()), reply as u8)?;
    }
    for &reply in SubmitReply::ALL {
        m.add(format!("SUBMIT_{}", reply.python_name()), reply as u8)?;
    }
    m.add("WORKER_REQUEST", PyBytes::new(m.py(), &WORKER_REQUEST))?;
    m.add("WORKER_REQUEST_FDS", WORKER_REQUEST_FDS)?;
    m.add("RELEASE_SPARE", PyBytes::new(m.py(), &RELEASE_SPARE))?;
    Ok(())
}
