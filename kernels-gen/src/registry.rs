//! The registry: the `Format` enum, the generated kernel modules and one entry per kernel of
//! the table (compiled or not), with the function pointers the runtime dispatch uses.

use crate::table::{Isa, TABLE};
use crate::{kernel_list, module_name, Op};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};

pub fn generate(isas: &[Isa], out_dir: &str) -> TokenStream {
    // formats, in table order of first appearance
    let mut formats: Vec<&'static crate::table::FormatSpec> = Vec::new();
    for r in TABLE {
        if !formats.iter().any(|f| f.name == r.format.name) {
            formats.push(r.format);
        }
    }
    let idents: Vec<_> = formats
        .iter()
        .map(|f| format_ident!("{}", f.ident))
        .collect();
    let consts = idents.clone();
    let nformats = Literal::usize_unsuffixed(formats.len());
    let docs = formats.iter().map(|f| f.doc);

    let mut mods = TokenStream::new();
    let mut sources = TokenStream::new();
    for row in TABLE.iter().filter(|r| isas.contains(&r.isa)) {
        let m = module_name(row);
        let ident = format_ident!("{}", m);
        let path = format!("{out_dir}/{m}.rs");
        let cfg = match row.isa.arch() {
            Some(a) => quote! { #[cfg(target_arch = #a)] },
            None => quote! {},
        };
        mods.extend(quote! {
            #cfg
            #[path = #path]
            pub mod #ident;
        });
        sources.extend(quote! { (#m, include_str!(#path)), });
    }

    let entries = kernel_list().into_iter().map(|k| {
        let id = &k.id;
        let fmt = format_ident!("{}", k.format.ident);
        let isa = format_ident!("{}", format!("{:?}", k.isa));
        let module = &k.module;
        let compiled = isas.contains(&k.isa);
        let m = format_ident!("{}", k.module);
        let f = format_ident!("{}", k.function);
        let cfg_arch = k.isa.arch();
        let (op, func) = match k.op {
            Op::Quantize => (quote! { KernelOp::Quantize }, quote! { KernelFn::Quantize(generated::#m::quantize) }),
            Op::Dequantize => (quote! { KernelOp::Dequantize }, quote! { KernelFn::Dequantize(generated::#m::dequantize) }),
            Op::Matmul(t) => {
                let (r, c, p) = (Literal::usize_unsuffixed(t.rows), Literal::usize_unsuffixed(t.cols), t.panel);
                let mb = Literal::usize_unsuffixed(t.min_batch);
                (
                    quote! { KernelOp::Matmul(Tile { rows: #r, cols: #c, panel: #p, min_batch: #mb }) },
                    quote! { KernelFn::Matmul { prepare: generated::#m::prepare, run: generated::#m::#f } },
                )
            }
        };
        let func = if compiled {
            match cfg_arch {
                Some(a) => quote! {{
                    #[cfg(target_arch = #a)] { #func }
                    #[cfg(not(target_arch = #a))] { KernelFn::NotCompiled }
                }},
                None => func,
            }
        } else {
            quote! { KernelFn::NotCompiled }
        };
        quote! {
            KernelEntry { id: #id, format: Format::#fmt, isa: Isa::#isa, op: #op, module: #module, func: #func },
        }
    });

    quote! {
        use crate::table::{Isa, Tile, FormatSpec};
        use crate::registry::{KernelEntry, KernelFn, KernelOp};

        /// A weight format of the table.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(non_camel_case_types)]
        pub enum Format {
            #(#[doc = #docs] #idents,)*
        }

        impl Format {
            /// Every format of the table, in table order.
            pub const ALL: [Format; #nformats] = [#(Format::#consts,)*];

            /// The table row describing this format.
            pub const fn spec(self) -> &'static FormatSpec {
                match self {
                    #(Format::#consts => &crate::table::#consts,)*
                }
            }
        }

        /// The generated kernel modules (one per compiled table row).
        pub mod generated {
            #mods
        }

        /// Generated source of every compiled module: (module name, source text).
        pub static SOURCES: &[(&str, &str)] = &[#sources];

        /// Every kernel of the table, compiled or not.
        pub static KERNELS: &[KernelEntry] = &[#(#entries)*];
    }
}
