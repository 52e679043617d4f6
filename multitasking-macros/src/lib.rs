//! Procedural macros for multitask: `#[task]` registers a named task,
//! `#[main]` turns a program's start as a worker process into a worker.
//!
//! `#[task]` rewrites `fn is_prime(n: u64) -> bool { .. }` into a unit
//! struct `is_prime` (so `pool.submit(is_prime, 7)` reads like Python's
//! `executor.submit(is_prime, 7)`), an inherent `is_prime.call(n)` that runs
//! the body here, an `impl multitasking::Task`, and an entry in the task
//! registry's linker section.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{parse_macro_input, FnArg, Ident, ItemFn, LitStr, Pat, ReturnType, Token, Type};

/// Options of `#[task(...)]`.
struct TaskArgs {
    /// `name = "..."`: the registered name instead of the module path.
    name: Option<LitStr>,
    /// `codec = "json"` or `"postcard"`.
    codec: Option<LitStr>,
    /// `dangerous`: a cluster worker serves it only when told to.
    dangerous: bool,
}

impl Parse for TaskArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = TaskArgs {
            name: None,
            codec: None,
            dangerous: false,
        };
        let metas = Punctuated::<syn::Meta, Token![,]>::parse_terminated(input)?;
        for meta in metas {
            let pair = match meta {
                syn::Meta::Path(p) if p.is_ident("dangerous") => {
                    args.dangerous = true;
                    continue;
                }
                syn::Meta::NameValue(pair) => pair,
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        "unknown option: expected name = \"...\", codec = \"...\" or dangerous",
                    ))
                }
            };
            let lit = match &pair.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => s.clone(),
                other => return Err(syn::Error::new_spanned(other, "expected a string literal")),
            };
            if pair.path.is_ident("name") {
                args.name = Some(lit);
            } else if pair.path.is_ident("codec") {
                if lit.value() != "json" && lit.value() != "postcard" {
                    return Err(syn::Error::new_spanned(
                        lit,
                        "codec must be \"postcard\" or \"json\"",
                    ));
                }
                args.codec = Some(lit);
            } else {
                return Err(syn::Error::new_spanned(
                    pair.path,
                    "unknown option: expected name = \"...\", codec = \"...\" or dangerous",
                ));
            }
        }
        Ok(args)
    }
}

/// Registers a function as a named task that any executor can run, in
/// this process, in a worker process or on another machine.
///
/// ```text
/// #[multitasking::task]
/// fn is_prime(n: u64) -> bool { /* ... */ }
///
/// pool.submit(is_prime, 112272535095293)?;  // a named task
/// is_prime.call(7);                         // run it here
/// ```
///
/// Several arguments make a tuple input: `fn add(a: u64, b: u64)` is
/// submitted as `pool.submit(add, (1, 2))`. Options: `name = "..."` (the
/// registered name; default the module path), `codec = "json"` (for
/// types postcard can't carry) and `dangerous`: a task that can do
/// anything its input says (run a shell command, write any file), which a
/// cluster worker serves only when told to (`multitask worker
/// --allow-shell`, `WorkerBuilder::allow_dangerous`), whatever its
/// allow-list says otherwise.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(attr as TaskArgs);
    let func = parse_macro_input!(item as ItemFn);
    match expand_task(args, func) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_task(args: TaskArgs, func: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a task can't be generic: it is found by name in another process",
        ));
    }
    if sig.asyncness.is_some() {
        return Err(syn::Error::new_spanned(
            sig.asyncness,
            "a task can't be async",
        ));
    }
    let ident = &sig.ident;
    let vis = &func.vis;
    let attrs = &func.attrs;
    let body = &func.block;

    let mut arg_types: Vec<&Type> = Vec::new();
    let mut params = Vec::new();
    let mut temps = Vec::new();
    for (i, arg) in sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new_spanned(
                    r,
                    "a task is a free function, not a method",
                ))
            }
            FnArg::Typed(pt) => {
                if !matches!(&*pt.pat, Pat::Ident(_) | Pat::Wild(_)) {
                    return Err(syn::Error::new_spanned(
                        &pt.pat,
                        "a task's arguments must be plain names",
                    ));
                }
                arg_types.push(&pt.ty);
                params.push(pt.clone());
                temps.push(format_ident!("__arg{}", i));
            }
        }
    }
    let input_ty = match arg_types.len() {
        1 => {
            let t = arg_types[0];
            quote!(#t)
        }
        _ => quote!((#(#arg_types,)*)),
    };
    let output_ty = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, t) => quote!(#t),
    };
    let destructure = match temps.len() {
        1 => {
            let t = &temps[0];
            quote!(let #t = input;)
        }
        _ => quote!(let (#(#temps,)*) = input;),
    };
    let name_expr = match &args.name {
        Some(n) => quote!(#n),
        None => {
            let s = ident.to_string();
            quote!(concat!(module_path!(), "::", #s))
        }
    };
    let type_text = format!(
        "({}) -> {}",
        arg_types
            .iter()
            .map(|t| quote!(#t).to_string())
            .collect::<Vec<_>>()
            .join(", "),
        output_ty
    );
    let codec = match args.codec.as_ref().map(LitStr::value).as_deref() {
        Some("json") => quote!(::multitasking::Codec::Json),
        _ => quote!(::multitasking::Codec::Postcard),
    };
    let static_name = Ident::new(
        &format!("__MULTITASK_TASK_{}", ident.to_string().to_uppercase()),
        Span::call_site(),
    );
    let ret = &sig.output;
    let dangerous = args.dangerous;

    Ok(quote! {
        #(#attrs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #vis struct #ident;

        impl #ident {
            /// Runs the task's body here, on this thread.
            #[allow(clippy::too_many_arguments)]
            #vis fn call(self, #(#params),*) #ret #body
        }

        impl ::multitasking::Task for #ident {
            type Input = #input_ty;
            type Output = #output_ty;
            const NAME: &'static str = #name_expr;
            const SIGNATURE: u64 = ::multitasking::__private::signature_hash(
                concat!(#name_expr, #type_text).as_bytes(),
            );
            const CODEC: ::multitasking::Codec = #codec;
            const DANGEROUS: bool = #dangerous;
            fn run(&self, input: Self::Input) -> Self::Output {
                #destructure
                Self::call(*self, #(#temps),*)
            }
        }

        #[::multitasking::__private::linkme::distributed_slice(::multitasking::__private::TASKS)]
        #[linkme(crate = ::multitasking::__private::linkme)]
        #[allow(non_upper_case_globals)]
        static #static_name: fn() -> ::multitasking::__private::TaskEntry =
            ::multitasking::__private::entry::<#ident>;
    })
}

/// Makes `main` call `multitasking::init()` first, so that a start of this
/// program as a worker process runs as a worker and never reaches the body.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Span::call_site(), "#[multitasking::main] takes no options")
            .to_compile_error()
            .into();
    }
    let mut func = parse_macro_input!(item as ItemFn);
    let body = &func.block;
    let new_body: syn::Block = syn::parse_quote!({
        ::multitasking::init();
        #body
    });
    *func.block = new_body;
    quote!(#func).into()
}
