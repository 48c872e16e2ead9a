//! Proc-macros that expand the kernel table into per-variant tests and bench lists, so a new
//! table row gets its equivalence tests and bench entries without any hand-written list.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use ternforge_gen::{kernel_list, Op};

/// `kernel_tests!(check_fn);` expands to one `#[test]` per kernel of the table, named after
/// the kernel id (`i2s_avx2_mm4x4`), each calling `check_fn("i2s.avx2.mm4x4")`.
/// `kernel_tests!(check_fn, matmul)` restricts to matmul kernels (also `quantize`,
/// `dequantize`).
#[proc_macro]
pub fn kernel_tests(input: TokenStream) -> TokenStream {
    let args = syn::parse_macro_input!(input with syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated);
    let mut it = args.into_iter();
    let Some(check) = it.next() else {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "kernel_tests!(check_fn[, op])",
        )
        .to_compile_error()
        .into();
    };
    let filter = it.next().map(|p| quote!(#p).to_string());
    let tests = kernel_list()
        .into_iter()
        .filter(|k| op_matches(k.op, filter.as_deref()))
        .map(|k| {
            let name = format_ident!("{}", k.ident);
            let id = k.id;
            quote! {
                #[test]
                fn #name() { #check(#id) }
            }
        });
    quote! { #(#tests)* }.into()
}

/// `kernel_ids!()` / `kernel_ids!(matmul)`: a `&'static [&'static str]` of every kernel id in
/// the table (optionally one op), for bench lists.
#[proc_macro]
pub fn kernel_ids(input: TokenStream) -> TokenStream {
    let filter = if input.is_empty() {
        None
    } else {
        Some(input.to_string().trim().to_string())
    };
    let ids = kernel_list()
        .into_iter()
        .filter(|k| op_matches(k.op, filter.as_deref()))
        .map(|k| k.id);
    quote! { &[#(#ids),*] }.into()
}

fn op_matches(op: Op, filter: Option<&str>) -> bool {
    match filter {
        None => true,
        Some("matmul") => matches!(op, Op::Matmul(_)),
        Some("gemv") => matches!(op, Op::Matmul(t) if t.cols == 1),
        Some("gemm") => matches!(op, Op::Matmul(t) if t.cols > 1),
        Some("quantize") => op == Op::Quantize,
        Some("dequantize") => op == Op::Dequantize,
        Some(_) => false,
    }
}
