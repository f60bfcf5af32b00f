//! Every bad-input class of issue 2, with the exact message: file, key path
//! and line:column.

use crate::support::*;
