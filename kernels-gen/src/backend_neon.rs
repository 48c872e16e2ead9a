//! AArch64 NEON backend (to be written).
use crate::backend::{Backend, CodeOp};
use crate::table::Isa;
use proc_macro2::{Ident, TokenStream};

pub struct Neon {
    pub isa: Isa,
}

impl Backend for Neon {
    fn isa(&self) -> Isa {
        self.isa
    }
    fn width(&self) -> usize {
        16
    }
    fn vec_ty(&self) -> TokenStream {
        unimplemented!()
    }
    fn prelude(&self) -> TokenStream {
        unimplemented!()
    }
    fn zero(&self) -> TokenStream {
        unimplemented!()
    }
    fn load(&self, _l: usize, _ptr: TokenStream) -> TokenStream {
        unimplemented!()
    }
    fn code(&self, _v: &Ident, _op: CodeOp) -> TokenStream {
        unimplemented!()
    }
    fn dot(&self, _acc: &Ident, _pairs: &[(Ident, Ident)]) -> TokenStream {
        unimplemented!()
    }
    fn hsum(&self, _acc: TokenStream) -> TokenStream {
        unimplemented!()
    }
    fn store_dequant(
        &self,
        _c: &Ident,
        _l: usize,
        _n: usize,
        _s: TokenStream,
        _o: TokenStream,
    ) -> TokenStream {
        unimplemented!()
    }
    fn dequant_step(&self) -> usize {
        4
    }
}
