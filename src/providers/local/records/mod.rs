//! The local provider's rows in the shared SQLite store (`migrations/0002_local_provider.sql`).
//!
//! Every function is one or two short statements; callers never hold the
//! connection across an await. [`Records`] is the handle; its statements
//! live beside it, one file per table family:
//!
//! ```text
//! runs.rs      templates, runs and run outputs; the stored run states
//! bases.rs     base root filesystems
//! gallery.rs   gallery images and versions (the publish claim), managed images
//! vms.rs       VMs made by `kiln vm`
//! faults.rs    durable fault-hook uses
//! ```

mod bases;
mod faults;
mod gallery;
mod runs;
mod vms;

pub(crate) use bases::BaseRow;
pub(crate) use gallery::{Claim, ManagedImageRow, VersionRow};
pub(crate) use runs::{LocalRunState, RunRow};

use crate::store::Db;

#[derive(Clone)]
pub(crate) struct Records {
    db: Db,
}

impl Records {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}
