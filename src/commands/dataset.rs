//! `rfnc dataset`: a small synthetic dataset in a real layout, to try `rfnc train` (and the
//! tests') without a download.

use rfnc_data::synthetic::{seg_classes, write_list, write_nyud, write_voc};
use rfnc_driver::train::data_failure;
use rfnc_driver::Error;

use crate::cli::DatasetArgs;
use crate::print::print_stdout;

pub fn run(args: &DatasetArgs) -> Result<(), Error> {
    let (root, seed) = (args.output.as_path(), args.seed);
    type Writer = fn(&std::path::Path, usize, usize, u64) -> Result<(), rfnc_data::DataError>;
    let (write, kind): (Writer, &str) = match args.layout.as_str() {
        "voc" => (write_voc, "voc"),
        "list" => (write_list, "list"),
        _ => (write_nyud, "nyud_depth or nyud_seg"),
    };
    write(root, args.train, args.val, seed).map_err(data_failure)?;
    print_stdout(&format!(
        "wrote {} training and {} validation images to {} ({} classes; train with --dataset {kind} --data-root {})\n",
        args.train,
        args.val,
        root.display(),
        seg_classes(),
        root.display()
    ))
}
