//! The channel gathers: concatenation, whose element reads the operand that holds its
//! channel, and its adjoint, a slice of the channels.

use super::{dims4, Launch, LowerError};
use crate::codegen::kir::{Expr, Ty};
use crate::ir::NodeId;

impl Launch<'_> {
    /// Splits an NCHW flat index of `dims` into (batch, channel, pixel within the plane).
    fn batch_channel_pixel(&mut self, flat: &Expr, dims: [u64; 4]) -> (Expr, Expr, Expr) {
        let plane = dims[2] * dims[3];
        let pixel = self.b.let_(self.remainder(flat, plane));
        let rest = self.b.let_(self.quotient(flat, plane));
        let channel = self.b.let_(rest.clone() % dims[1] as i64);
        let batch = self.b.let_(rest / dims[1] as i64);
        (batch, channel, pixel)
    }

    /// Element `flat` of a concatenation: the element of the operand whose channel range
    /// holds its channel (only that operand is read).
    pub(super) fn concat(&mut self, n: NodeId, flat: &Expr) -> Result<Expr, LowerError> {
        let d = dims4(self.dims(n))?;
        let plane = (d[2] * d[3]) as i64;
        let (batch, channel, pixel) = self.batch_channel_pixel(flat, d);
        let value = self.b.private(Ty::F32, 1);
        self.b.store(value, 0, 0.0f32);
        let mut start = 0i64;
        for operand in self.graph.operands(n) {
            let c = dims4(self.dims(operand))?[1] as i64;
            let mine = channel.clone().ge(start).and(channel.clone().lt(start + c));
            self.b.begin_if(mine);
            let index = self
                .b
                .let_((batch.clone() * c + (channel.clone() - start)) * plane + pixel.clone());
            let v = self.value_at(operand, &index)?;
            self.b.store(value, 0, v);
            self.b.end_if();
            start += c;
        }
        Ok(Expr::load(value, 0))
    }

    /// Element `flat` of channels `start..` of operand 0.
    pub(super) fn slice_channels(
        &mut self,
        n: NodeId,
        flat: &Expr,
        start: u64,
    ) -> Result<Expr, LowerError> {
        let x = self.operand(n, 0);
        let (xd, yd) = (dims4(self.dims(x))?, dims4(self.dims(n))?);
        let plane = (yd[2] * yd[3]) as i64;
        let (batch, channel, pixel) = self.batch_channel_pixel(flat, yd);
        let index = self
            .b
            .let_((batch * xd[1] as i64 + channel + start as i64) * plane + pixel);
        self.value_at(x, &index)
    }
}
