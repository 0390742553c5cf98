//! `rfnc predict`: predictions for image files written as pictures; also the conversion of
//! the protocol flags `eval` shares.

use rfnc_driver::eval::ProtocolOptions;
use rfnc_driver::predict::{run_predict, Palette, PredictOptions};
use rfnc_driver::Error;

use crate::cli::{PredictArgs, ProtocolArgs};
use crate::commands::device;
use crate::print::print_stdout;
use crate::progress::ImageProgress;

pub fn run(args: &PredictArgs) -> Result<(), Error> {
    let palette = match args.palette.as_str() {
        "voc" => Palette::Voc,
        "cityscapes" => Palette::Cityscapes,
        file => Palette::File(file.into()),
    };
    let options = PredictOptions {
        source: args.common.source(),
        weights: args.weights.clone(),
        inputs: args.images.clone(),
        output: args.output.clone(),
        protocol: protocol(&args.protocol),
        palette,
        overlay: args.overlay,
        device: device(&args.device),
        gpu: args.device.gpu.clone(),
        precision: args.device.precision.into(),
        use_cache: !args.device.no_cache,
        timings: args.common.timings,
    };
    let mut progress = ImageProgress::new("predicting");
    let written = run_predict(&options, &mut progress);
    progress.finish();
    let written = written?;
    print_stdout(&format!(
        "wrote {} files to {}\n",
        written.len(),
        args.output.display()
    ))
}

pub fn protocol(args: &ProtocolArgs) -> ProtocolOptions {
    ProtocolOptions {
        crop: args.crop,
        stride: args.stride,
        scales: args.scales.0.clone(),
        flip: args.flip,
    }
}
