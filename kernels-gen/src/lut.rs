//! Templates of the LUT formats (TL1, TL2).

use crate::table::Row;
use proc_macro2::TokenStream;

pub fn generate_row(row: &Row) -> Result<TokenStream, String> {
    Err(format!(
        "LUT template for {} not written yet",
        row.format.ident
    ))
}
