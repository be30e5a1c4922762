//! Pod networking: CNI plugin invocation and berth's default bridge network.
